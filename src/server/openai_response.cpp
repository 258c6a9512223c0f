#include "server/openai_response.h"

#include <random>

namespace clawmine::server {
namespace {

Json bytes_of(const std::string& s) {
  Json b = Json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

Json chat_logprobs(const tokenizer::Tokenizer& tok, const std::vector<runtime::SampledToken>& tokens, int64_t n_top) {
  Json content = Json::array();
  for (const auto& t : tokens) {
    const std::string& s = tok.token_bytes(t.id);
    Json top = Json::array();
    for (int64_t i = 0; i < n_top && i < static_cast<int64_t>(t.top.size()); ++i) {
      const std::string& a = tok.token_bytes(t.top[i].id);
      top.push_back(Json{{"token", a}, {"logprob", t.top[i].logprob}, {"bytes", bytes_of(a)}});
    }
    content.push_back(Json{{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}});
  }
  return content;
}

Json completion_logprobs(const tokenizer::Tokenizer& tok, const std::vector<runtime::SampledToken>& tokens,
                         int64_t n_top, int64_t& offset) {
  Json out{{"tokens", Json::array()}, {"token_logprobs", Json::array()}, {"top_logprobs", Json::array()},
           {"text_offset", Json::array()}};
  for (const auto& t : tokens) {
    const std::string& s = tok.token_bytes(t.id);
    out["tokens"].push_back(s);
    out["token_logprobs"].push_back(t.logprob);
    Json top = Json::object();
    for (int64_t i = 0; i < n_top && i < static_cast<int64_t>(t.top.size()); ++i)
      top[tok.token_bytes(t.top[i].id)] = t.top[i].logprob;
    out["top_logprobs"].push_back(n_top > 0 ? top : Json(nullptr));
    out["text_offset"].push_back(offset);
    offset += static_cast<int64_t>(s.size());
  }
  return out;
}

Json tool_call_json(size_t index, const tokenizer::ParsedToolCall& call) {
  return Json{{"index", index},
              {"id", random_id("call")},
              {"type", "function"},
              {"function", Json{{"name", call.name}, {"arguments", call.arguments}}}};
}

Json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return Json{{"prompt_tokens", prompt_tokens},
              {"completion_tokens", completion_tokens},
              {"total_tokens", prompt_tokens + completion_tokens}};
}

std::string random_id(const std::string& prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string id = prefix + "-";
  for (int i = 0; i < 24; ++i) id += kHex[rng() % 16];
  return id;
}

}  // namespace clawmine::server
