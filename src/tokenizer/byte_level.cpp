// Table construction follows GPT-2's bytes_to_unicode: bytes in '!'..'~', 0xA1..0xAC and
// 0xAE..0xFF keep their codepoint; the other 68 bytes take 256, 257, ... in byte order.
#include "tokenizer/byte_level.h"

#include "tokenizer/utf8.h"

namespace clawmine::tokenizer {
namespace {

struct ByteTables {
  std::array<uint32_t, 256> codepoint{};
  std::array<std::string, 256> symbol;
  std::array<int16_t, 324> byte_of_codepoint{};  // codepoints < 324 only; -1 if not a symbol

  ByteTables() {
    byte_of_codepoint.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      codepoint[b] = keep ? static_cast<uint32_t>(b) : next++;
      utf8_append(symbol[b], codepoint[b]);
      byte_of_codepoint[codepoint[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return tables().codepoint[b]; }

const std::string& byte_symbol(uint8_t b) { return tables().symbol[b]; }

std::optional<std::string> byte_level_decode(std::string_view symbols) {
  const ByteTables& t = tables();
  std::string out;
  out.reserve(symbols.size());
  for (size_t i = 0; i < symbols.size();) {
    const uint32_t cp = utf8_next(symbols, i);
    if (cp >= t.byte_of_codepoint.size() || t.byte_of_codepoint[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(t.byte_of_codepoint[cp]));
  }
  return out;
}

}  // namespace clawmine::tokenizer
