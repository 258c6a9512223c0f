// Server-sent events framing for streamed completions: one `data: <json>` event per chunk,
// a blank line after each, and the `data: [DONE]` terminator OpenAI clients wait for.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace clawmine::server {

inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// JSON text of j; invalid UTF-8 in strings (partial tokens) becomes U+FFFD instead of throwing.
std::string dump_json(const nlohmann::ordered_json& j);

// "data: <compact json>\n\n"
std::string sse_event(const nlohmann::ordered_json& j);

}  // namespace clawmine::server
