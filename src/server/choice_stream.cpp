#include "server/choice_stream.h"

namespace clawmine::server {

ChoiceStream::ChoiceStream(const tokenizer::Tokenizer& tok, bool chat, bool thinking, std::vector<std::string> stop,
                           int32_t eos_id)
    : tok_(tok), chat_(chat), eos_id_(eos_id), decoder_(tok, /*skip_special_tokens=*/!chat), stop_(std::move(stop)),
      parser_(thinking) {}

void ChoiceStream::route(std::string text, ChoiceDelta& d) {
  if (text.empty()) return;
  if (!chat_) {
    full_text_ += text;
    d.text += text;
    return;
  }
  tokenizer::ParseDelta p = parser_.feed(text);
  d.chat.reasoning_content += p.reasoning_content;
  d.chat.content += p.content;
  for (auto& c : p.tool_calls) d.chat.tool_calls.push_back(std::move(c));
}

ChoiceDelta ChoiceStream::push(const runtime::SampledToken& token) {
  ChoiceDelta d;
  ++tokens_;
  d.logprobs.push_back(token);
  if (stop_.stopped() || token.id == eos_id_) return d;
  route(stop_.feed(decoder_.push(token.id)), d);
  has_tool_calls_ = has_tool_calls_ || !d.chat.tool_calls.empty();
  return d;
}

ChoiceDelta ChoiceStream::finish() {
  ChoiceDelta d;
  if (!stop_.stopped()) route(stop_.feed(decoder_.finish()), d);
  route(stop_.finish(), d);
  if (chat_) {
    tokenizer::ParseDelta p = parser_.finish();
    d.chat.reasoning_content += p.reasoning_content;
    d.chat.content += p.content;
    for (auto& c : p.tool_calls) d.chat.tool_calls.push_back(std::move(c));
  }
  has_tool_calls_ = has_tool_calls_ || !d.chat.tool_calls.empty();
  return d;
}

}  // namespace clawmine::server
