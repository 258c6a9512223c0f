// DeepSeek V4 chat encoding: messages → prompt text, with the semantics of DeepSeek's
// encoding_dsv4.py (spec deepseek-v4.md §5.2). Tool messages merge into user turns as
// <tool_result> blocks ordered like the preceding assistant's calls; thinking vs chat mode,
// drop_thinking, reasoning_effort "max", tools and response_format in system/developer turns,
// DSML tool calls in assistant history, BOS and the generation prompt.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace clawmine::tokenizer {

struct ChatToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON object text, as in OpenAI's function.arguments
};

struct ChatMessage {
  std::string role;  // system, user, developer, assistant, tool, latest_reminder
  std::optional<std::string> content;
  std::string reasoning_content;  // assistant turns
  std::vector<ChatToolCall> tool_calls;
  std::string tool_call_id;  // tool results
  std::string name;
  nlohmann::ordered_json tools;            // OpenAI tools array (system/developer), or null
  nlohmann::ordered_json response_format;  // system/developer, or null
  std::optional<std::string> task;         // action, query, authority, domain, title, read_url
  bool wo_eos = false;                     // assistant turn left open (no EOS)
};

struct ChatEncodeOptions {
  bool thinking = false;       // thinking_mode "thinking" (else "chat")
  bool drop_thinking = true;   // drop reasoning of turns before the last user turn
  bool add_bos = true;         // add_default_bos_token
  std::string reasoning_effort;  // "", "high" or "max"
};

// Prompt text for `messages` continuing `context` (already-encoded earlier turns: no BOS then).
// Throws clawmine::Error on an unknown role, task or reasoning_effort, or invalid arguments JSON.
std::string encode_messages(const std::vector<ChatMessage>& messages, const ChatEncodeOptions& options,
                            const std::vector<ChatMessage>& context = {});

// The tools section of a system prompt for OpenAI-format `tools`.
std::string render_tools(const nlohmann::ordered_json& tools);

// OpenAI-style JSON messages (an array, or an object with "messages") → ChatMessage list.
// Content may be a string, null or an array of parts ({"type":"text","text":...}).
std::vector<ChatMessage> parse_chat_messages(const nlohmann::ordered_json& json);

namespace tokens {
inline constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
inline constexpr const char* kEos = "<｜end▁of▁sentence｜>";
inline constexpr const char* kThinkStart = "<think>";
inline constexpr const char* kThinkEnd = "</think>";
inline constexpr const char* kDsml = "｜DSML｜";
inline constexpr const char* kUser = "<｜User｜>";
inline constexpr const char* kAssistant = "<｜Assistant｜>";
inline constexpr const char* kLatestReminder = "<｜latest_reminder｜>";
}  // namespace tokens

}  // namespace clawmine::tokenizer
