// Splits DeepSeek V4 model output into reasoning_content, content and tool_calls, whole or
// incrementally (feed text pieces as they are detokenized, get deltas back). Markup never leaks:
// "</think>", the DSML tool-call block and EOS are consumed; text that could still become markup
// is held back until it is decided. Malformed or truncated DSML does not throw: complete
// invokes stay tool calls and the rest of the block, verbatim, becomes content.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace clawmine::tokenizer {

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // JSON object text, keys in DSML order
};

struct ParsedMessage {
  std::string reasoning_content;
  std::string content;
  std::vector<ParsedToolCall> tool_calls;
};

// What one feed() or finish() added; tool calls arrive whole, with their index in the message.
struct ParseDelta {
  std::string reasoning_content;
  std::string content;
  std::vector<std::pair<size_t, ParsedToolCall>> tool_calls;
  bool empty() const { return reasoning_content.empty() && content.empty() && tool_calls.empty(); }
};

class OutputParser {
 public:
  // thinking: the prompt ended with <think>, so output starts inside the reasoning block.
  explicit OutputParser(bool thinking);

  ParseDelta feed(std::string_view piece);
  // End of output: releases held-back text; an unfinished tool block becomes content.
  ParseDelta finish();

  const ParsedMessage& message() const { return message_; }
  bool done() const { return state_ == State::kDone; }  // EOS seen

 private:
  enum class State { kReasoning, kContent, kToolCalls, kRawContent, kDone };
  void step(ParseDelta& d, bool final);
  void emit_reasoning(ParseDelta& d, std::string_view s);
  void emit_content(ParseDelta& d, std::string_view s);
  // Parses complete invokes off the front of buffer_; returns false once malformed.
  bool parse_invokes(ParseDelta& d, bool final);

  State state_;
  std::string buffer_;     // undecided text
  std::string block_raw_;  // verbatim text of the current tool block (for the malformed case)
  ParsedMessage message_;
};

// Whole completion (may include the trailing EOS text).
ParsedMessage parse_completion(std::string_view text, bool thinking);

}  // namespace clawmine::tokenizer
