// Chat-encoding vectors (tests/fixtures/tokenizer/chat_vectors.json) covering each role, both
// modes, drop_thinking, reasoning effort, tools, tool results, tasks, context continuation.
#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "support/test_support.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/python_json.h"

namespace clawmine::tokenizer {
namespace {

using Json = nlohmann::ordered_json;

Json load_vectors() {
  std::ifstream in(test::fixture_dir("tokenizer/chat_vectors.json"));
  return Json::parse(in);
}

TEST(ChatEncoding, MatchesVectors) {
  const Json doc = load_vectors();
  ASSERT_GE(doc["vectors"].size(), 15u);
  for (const Json& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    ChatEncodeOptions o;
    o.thinking = v["thinking"];
    o.drop_thinking = v["drop_thinking"];
    o.reasoning_effort = v["reasoning_effort"];
    std::vector<ChatMessage> context;
    if (v.contains("context")) context = parse_chat_messages(v["context"]);
    const std::string prompt = encode_messages(parse_chat_messages(v["messages"]), o, context);
    EXPECT_EQ(prompt, v["expected"].get<std::string>());
  }
}

TEST(ChatEncoding, RejectsBadInput) {
  ChatEncodeOptions o;
  EXPECT_THROW(encode_messages({ChatMessage{.role = "wizard", .content = "x"}}, o), Error);
  EXPECT_THROW(encode_messages({ChatMessage{.role = "developer"}}, o), Error);
  o.reasoning_effort = "low";
  EXPECT_THROW(encode_messages({ChatMessage{.role = "user", .content = "x"}}, o), Error);
  o.reasoning_effort = "";
  ChatMessage a{.role = "assistant"};
  a.tool_calls.push_back(ChatToolCall{"id", "f", "{not json"});
  try {
    encode_messages({a}, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tool call 'f'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_chat_messages(Json::parse(R"([{"content": "no role"}])")), Error);
}

TEST(PythonJson, MatchesPythonDumps) {
  EXPECT_EQ(python_json(Json::parse(R"({"b": [1, 2.5, true, null], "a": "x\"\n\u0001é"})")),
            "{\"b\": [1, 2.5, true, null], \"a\": \"x\\\"\\n\\u0001é\"}");
  EXPECT_EQ(python_json(Json(1.0)), "1.0");
  EXPECT_EQ(python_json(Json(0.1)), "0.1");
  EXPECT_EQ(python_json(Json(1e-05)), "1e-05");
  EXPECT_EQ(python_json(Json(0.0001)), "0.0001");
  EXPECT_EQ(python_json(Json(1e16)), "1e+16");
  EXPECT_EQ(python_json(Json(123456789012345.0)), "123456789012345.0");
  EXPECT_EQ(python_json(Json(-2.5e-7)), "-2.5e-07");
  EXPECT_EQ(python_json(Json::object()), "{}");
}

}  // namespace
}  // namespace clawmine::tokenizer
