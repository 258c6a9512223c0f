// JSON text exactly as Python's json.dumps(value, ensure_ascii=False) writes it: ", " and ": "
// separators, keys in insertion order, non-ASCII kept, floats in shortest round-trip form.
// DeepSeek's encoding_dsv4.py renders tool schemas and arguments this way, so prompts match
// byte for byte.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace clawmine::tokenizer {

std::string python_json(const nlohmann::ordered_json& value);

}  // namespace clawmine::tokenizer
