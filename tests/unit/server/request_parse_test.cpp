// Request parsing at the edge: valid bodies become structs with the right defaults; invalid ones
// throw ApiError with the status and the offending param.
#include <gtest/gtest.h>

#include "server/api_error.h"
#include "server/openai_request.h"

namespace clawmine::server {
namespace {

ApiError error_of(std::string_view body) {
  try {
    parse_chat_request(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body;
  return ApiError(0, "", "");
}

TEST(RequestParse, ChatDefaultsAndFields) {
  const ChatRequest r = parse_chat_request(
      R"({"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
          "temperature":0.5,"top_p":0.9,"top_k":7,"min_p":0.1,"seed":42,"n":2,"stop":"x","max_completion_tokens":9,
          "logprobs":true,"top_logprobs":4,"stream":true,"stream_options":{"include_usage":true},"reasoning_effort":"max"})");
  EXPECT_EQ(r.gen.model, "m");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(*r.messages[1].content, "ab");
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, 0.5f);
  EXPECT_EQ(r.gen.sampling.top_k, 7);
  EXPECT_EQ(r.gen.sampling.seed, 42u);
  EXPECT_TRUE(r.gen.seed_given);
  EXPECT_EQ(r.gen.n, 2);
  EXPECT_EQ(r.gen.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(*r.gen.max_tokens, 9);
  EXPECT_EQ(*r.gen.logprobs, 4);
  EXPECT_TRUE(r.gen.stream && r.gen.include_usage);
  EXPECT_TRUE(r.encode.thinking);
  EXPECT_EQ(r.encode.reasoning_effort, "max");

  const ChatRequest d = parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}]})");
  EXPECT_FLOAT_EQ(d.gen.sampling.temperature, 1.0f);
  EXPECT_FALSE(d.gen.max_tokens.has_value());
  EXPECT_FALSE(d.gen.logprobs.has_value());
  EXPECT_FALSE(d.encode.thinking);
}

TEST(RequestParse, ToolsAndFormatGoToAnInsertedSystemTurn) {
  const ChatRequest r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],
          "tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_object"}})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].tools.size(), 1u);
  EXPECT_EQ(r.messages[0].response_format["type"], "json_object");
  EXPECT_EQ(r.tool_choice, "f");
  EXPECT_TRUE(r.has_tools);
  const ChatRequest none = parse_chat_request(
      R"({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"})");
  EXPECT_FALSE(none.has_tools);
  EXPECT_EQ(none.messages.size(), 1u);
}

TEST(RequestParse, ErrorsNameTheField) {
  struct Case { const char* body; int status; const char* param; };
  const Case cases[] = {
      {"{", 400, ""},
      {"\xff", 400, ""},
      {R"({"messages":[]})", 400, "messages"},
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":3})", 400, "temperature"},
      {R"({"messages":[{"role":"user","content":"x"}],"n":1.5})", 400, "n"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":-1})", 400, "max_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551615})", 400, "max_tokens"},
      {R"({"messages":[{"role":"bot","content":"x"}]})", 400, "messages[0].role"},
      {R"({"messages":[{"role":"user","content":"x"}],"stop":[1]})", 400, "stop[0]"},
  };
  for (const auto& c : cases) {
    const ApiError e = error_of(c.body);
    EXPECT_EQ(e.status, c.status) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.what();
  }
}

TEST(RequestParse, CompletionPrompts) {
  EXPECT_EQ(*parse_completion_request(R"({"prompt":"abc"})").prompt_text, "abc");
  EXPECT_EQ(*parse_completion_request(R"({"prompt":["abc"]})").prompt_text, "abc");
  EXPECT_EQ(parse_completion_request(R"({"prompt":[1,2,3],"logprobs":0})").prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_THROW(parse_completion_request(R"({"prompt":["a","b"]})"), ApiError);
  EXPECT_THROW(parse_completion_request(R"({"prompt":[2147483648]})"), ApiError);
  EXPECT_EQ(parse_detokenize_request(R"({"tokens":[5]})").tokens, std::vector<int32_t>{5});
}

TEST(ApiErrorBody, OpenAIShape) {
  const auto j = nlohmann::json::parse(error_body(invalid_request("bad 'x'", "x", "c")));
  EXPECT_EQ(j["error"]["message"], "bad 'x'");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "x");
  EXPECT_EQ(j["error"]["code"], "c");
  EXPECT_TRUE(nlohmann::json::parse(error_body(ApiError(500, "server_error", "m")))["error"]["param"].is_null());
}

}  // namespace
}  // namespace clawmine::server
