// One choice of a completion, from sampled tokens to what the client sees: incremental
// detokenization, stop strings (held back, never split), and for chat the reasoning / content /
// DSML tool-call split. Each push returns the delta to send, with the logprobs of its tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "server/stop_matcher.h"
#include "tokenizer/output_parser.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace clawmine::server {

struct ChoiceDelta {
  std::string text;                               // completions: raw text
  tokenizer::ParseDelta chat;                     // chat: reasoning / content / tool calls
  std::vector<runtime::SampledToken> logprobs;    // tokens sampled in this step
  bool empty() const { return text.empty() && chat.empty() && logprobs.empty(); }
};

class ChoiceStream {
 public:
  // chat: split with the output parser (thinking: output starts inside <think>).
  ChoiceStream(const tokenizer::Tokenizer& tok, bool chat, bool thinking, std::vector<std::string> stop, int32_t eos_id);

  ChoiceDelta push(const runtime::SampledToken& token);
  ChoiceDelta finish();
  bool stopped() const { return stop_.stopped(); }  // a stop string matched: generation should end
  int64_t tokens() const { return tokens_; }
  bool has_tool_calls() const { return has_tool_calls_; }
  const std::string& full_text() const { return full_text_; }  // completions: all emitted text

 private:
  void route(std::string text, ChoiceDelta& d);

  const tokenizer::Tokenizer& tok_;
  bool chat_;
  int32_t eos_id_;
  tokenizer::StreamDecoder decoder_;
  StopMatcher stop_;
  tokenizer::OutputParser parser_;
  int64_t tokens_ = 0;
  bool has_tool_calls_ = false;
  std::string full_text_;
};

}  // namespace clawmine::server
