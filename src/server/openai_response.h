// OpenAI response pieces built from generation results: logprobs in the chat shape
// ({"content": [{token, logprob, bytes, top_logprobs}]}) and the completions shape
// ({tokens, token_logprobs, top_logprobs, text_offset}), tool calls, usage, ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"
#include "tokenizer/output_parser.h"
#include "tokenizer/tokenizer.h"

namespace clawmine::server {

using Json = nlohmann::ordered_json;

// Entries for `tokens`, each with up to n_top alternatives.
Json chat_logprobs(const tokenizer::Tokenizer& tok, const std::vector<runtime::SampledToken>& tokens, int64_t n_top);

// Completions logprobs object; text_offset starts at `offset` (updated past the tokens' text).
Json completion_logprobs(const tokenizer::Tokenizer& tok, const std::vector<runtime::SampledToken>& tokens,
                         int64_t n_top, int64_t& offset);

// {"index", "id", "type": "function", "function": {"name", "arguments"}}
Json tool_call_json(size_t index, const tokenizer::ParsedToolCall& call);

Json usage_json(int64_t prompt_tokens, int64_t completion_tokens);

// "<prefix>-<24 random hex digits>"
std::string random_id(const std::string& prefix);

}  // namespace clawmine::server
