// The GPT-2 byte-level alphabet used by ByteLevel pre-tokenizers and decoders: every byte maps to
// one printable codepoint (printable Latin-1 bytes to themselves, the rest to U+0100 upward), so
// vocabulary strings are UTF-8 text over 256 symbols.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace clawmine::tokenizer {

// Codepoint that stands for byte b.
uint32_t byte_to_codepoint(uint8_t b);
// UTF-8 text of the symbol for byte b (1 or 2 bytes).
const std::string& byte_symbol(uint8_t b);
// Inverse mapping: the bytes a vocabulary string stands for, or nullopt if some codepoint
// is outside the alphabet.
std::optional<std::string> byte_level_decode(std::string_view symbols);

}  // namespace clawmine::tokenizer
