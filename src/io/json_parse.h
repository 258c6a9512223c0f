// Strict JSON parsing for loader inputs (safetensors headers, shard indexes). nlohmann keeps
// the last of two equal keys without a word, which in a safetensors header would silently
// drop a tensor; here a repeated key in any object is an error naming the key.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace clawmine::io {

// Parses `text`; `source` names where it came from (a file path) in error messages. Throws
// clawmine::Error on invalid JSON or on a key repeated within one object; `top_level_noun`
// says what a key of the top-level object is ("tensor name" in a safetensors header).
nlohmann::json parse_json_strict(std::string_view text, const std::string& source,
                                 const std::string& top_level_noun = "key");

}  // namespace clawmine::io
