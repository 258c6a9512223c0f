// OpenAI request bodies parsed at the edge into plain structs. Every check that can fail names
// the field (param) in an ApiError: malformed JSON, invalid UTF-8, wrong types, out-of-range
// numbers, empty messages, bad roles, unknown tool_choice targets. Nothing past this file sees
// raw request JSON except the tools / response_format objects the chat encoding renders.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"
#include "tokenizer/chat_encoding.h"

namespace clawmine::server {

// Fields shared by chat and completions.
struct GenerationFields {
  std::string model;                   // empty: the served model
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage
  std::optional<int64_t> max_tokens;   // max_tokens / max_completion_tokens
  runtime::SamplingParams sampling;
  bool seed_given = false;
  std::vector<std::string> stop;       // up to 4 non-empty strings
  int64_t n = 1;
  std::optional<int64_t> logprobs;     // chat: top_logprobs when logprobs=true; completions: the integer
  bool ignore_eos = false;             // vLLM's extension: EOS does not end the choice (its text is never sent)
};

struct ChatRequest {
  GenerationFields gen;
  std::vector<tokenizer::ChatMessage> messages;  // tools / response_format attached to the system turn
  bool has_tools = false;
  std::string tool_choice = "auto";    // auto, none, required, or a function name
  tokenizer::ChatEncodeOptions encode;
};

struct CompletionRequest {
  GenerationFields gen;
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;     // when the prompt was given as token ids
  bool echo = false;
};

struct TokenizeRequest {
  std::optional<std::string> text;     // "prompt"
  std::optional<ChatRequest> chat;     // "messages"
  bool add_special_tokens = true;
};

struct DetokenizeRequest {
  std::vector<int32_t> tokens;
};

// body: the raw HTTP body. Throw ApiError (400) naming the field.
ChatRequest parse_chat_request(std::string_view body);
CompletionRequest parse_completion_request(std::string_view body);
TokenizeRequest parse_tokenize_request(std::string_view body);
DetokenizeRequest parse_detokenize_request(std::string_view body);

// The body as a JSON object, or ApiError for invalid UTF-8, malformed JSON or a non-object.
nlohmann::ordered_json parse_body(std::string_view body);

}  // namespace clawmine::server
