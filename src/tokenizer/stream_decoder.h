// Incremental detokenization for streaming: ids go in one at a time, text comes out that is
// always valid UTF-8. Bytes that could still become a complete character are held back until
// the next token (or finish()) decides; the concatenated output equals Tokenizer::decode.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace clawmine::tokenizer {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

  // Text that became complete with this token (possibly empty).
  std::string push(int32_t id);
  // Whatever is still held back, with an unfinished sequence shown as U+FFFD.
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // at most 3 bytes of an incomplete sequence
};

}  // namespace clawmine::tokenizer
