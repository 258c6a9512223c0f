// Splitting only outside a valid incomplete prefix keeps the output identical to decoding all
// bytes at once: an ill-formed subpart never spans the split point.
#include "tokenizer/stream_decoder.h"

#include "tokenizer/utf8.h"

namespace clawmine::tokenizer {

std::string StreamDecoder::push(int32_t id) {
  const std::string& bytes = tokenizer_.token_bytes(id);
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  pending_ += bytes;
  const size_t tail = utf8_incomplete_tail(pending_);
  std::string out = utf8_sanitize(std::string_view(pending_).substr(0, pending_.size() - tail));
  pending_.erase(0, pending_.size() - tail);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace clawmine::tokenizer
