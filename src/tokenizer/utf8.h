// UTF-8 helpers shared by the tokenizer: validation with replacement (the policy of Python's
// bytes.decode(errors="replace") and Rust's from_utf8_lossy: each maximal ill-formed subpart
// becomes one U+FFFD), the length of the longest complete prefix for streaming, and codepoint
// encode/decode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace clawmine::tokenizer {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed sequence starting at s[i], or 0 if s[i] starts an ill-formed one.
size_t utf8_sequence_length(std::string_view s, size_t i);

// s with every ill-formed subpart replaced by U+FFFD; returns s unchanged when valid.
std::string utf8_sanitize(std::string_view s);
bool utf8_is_valid(std::string_view s);

// Bytes at the end of s that form the start of a well-formed but incomplete sequence (0..3):
// a streaming decoder holds these back until the next bytes arrive.
size_t utf8_incomplete_tail(std::string_view s);

void utf8_append(std::string& out, uint32_t codepoint);
// Decodes the (valid) sequence at s[i], advancing i.
uint32_t utf8_next(std::string_view s, size_t& i);

}  // namespace clawmine::tokenizer
