// Output parsing, whole and streamed: every split of the input into pieces must give the same
// message as the whole text, and the deltas must add up to it. Malformed and truncated markup
// must become content without throwing.
#include <gtest/gtest.h>

#include "tokenizer/chat_encoding.h"
#include "tokenizer/output_parser.h"

namespace clawmine::tokenizer {
namespace {

const std::string kEos = tokens::kEos;
const std::string D = tokens::kDsml;

std::string invoke(const std::string& name, const std::string& params) {
  return "<" + D + "invoke name=\"" + name + "\">\n" + params + "\n</" + D + "invoke>";
}
std::string param(const std::string& k, bool str, const std::string& v) {
  return "<" + D + "parameter name=\"" + k + "\" string=\"" + (str ? "true" : "false") + "\">" + v + "</" + D + "parameter>";
}
std::string block(const std::string& invokes) {
  return "\n\n<" + D + "tool_calls>\n" + invokes + "\n</" + D + "tool_calls>";
}

const std::string kTwoCalls =
    "I'll check." + block(invoke("get_weather", param("city", true, "Paris")) + "\n" +
                          invoke("get_weather", param("city", true, "Ro\"me") + "\n" + param("days", false, "2"))) + kEos;

// Feeds `pieces`, checks deltas add up to the final message, returns it.
ParsedMessage stream(const std::vector<std::string>& pieces, bool thinking) {
  OutputParser p(thinking);
  ParsedMessage sum;
  auto add = [&](const ParseDelta& d) {
    sum.reasoning_content += d.reasoning_content;
    sum.content += d.content;
    for (const auto& [i, call] : d.tool_calls) {
      EXPECT_EQ(i, sum.tool_calls.size());
      sum.tool_calls.push_back(call);
    }
  };
  for (const auto& piece : pieces) add(p.feed(piece));
  add(p.finish());
  EXPECT_EQ(sum.reasoning_content, p.message().reasoning_content);
  EXPECT_EQ(sum.content, p.message().content);
  EXPECT_EQ(sum.tool_calls.size(), p.message().tool_calls.size());
  return p.message();
}

void expect_same(const ParsedMessage& a, const ParsedMessage& b) {
  EXPECT_EQ(a.reasoning_content, b.reasoning_content);
  EXPECT_EQ(a.content, b.content);
  ASSERT_EQ(a.tool_calls.size(), b.tool_calls.size());
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    EXPECT_EQ(a.tool_calls[i].name, b.tool_calls[i].name);
    EXPECT_EQ(a.tool_calls[i].arguments, b.tool_calls[i].arguments);
  }
}

// Every split into two pieces, every split into three pieces at a stride, and char by char.
void check_all_splits(const std::string& text, bool thinking) {
  const ParsedMessage whole = parse_completion(text, thinking);
  for (size_t i = 0; i <= text.size(); ++i) {
    SCOPED_TRACE(i);
    expect_same(stream({text.substr(0, i), text.substr(i)}, thinking), whole);
  }
  for (size_t i = 0; i <= text.size(); i += 3) {
    for (size_t j = i; j <= text.size(); j += 5) {
      expect_same(stream({text.substr(0, i), text.substr(i, j - i), text.substr(j)}, thinking), whole);
    }
  }
  std::vector<std::string> chars;
  for (char c : text) chars.emplace_back(1, c);
  expect_same(stream(chars, thinking), whole);
}

TEST(OutputParser, ChatContent) {
  const auto m = parse_completion("Hello world" + kEos, false);
  EXPECT_EQ(m.content, "Hello world");
  EXPECT_TRUE(m.reasoning_content.empty());
  EXPECT_TRUE(m.tool_calls.empty());
}

TEST(OutputParser, ThinkingSplitsReasoning) {
  const auto m = parse_completion("Let me think.\n</think>The answer is 4." + kEos, true);
  EXPECT_EQ(m.reasoning_content, "Let me think.\n");
  EXPECT_EQ(m.content, "The answer is 4.");
  check_all_splits("Let me think.\n</think>The answer is 4." + kEos, true);
}

TEST(OutputParser, ToolCalls) {
  const auto m = parse_completion(kTwoCalls, false);
  EXPECT_EQ(m.content, "I'll check.");
  ASSERT_EQ(m.tool_calls.size(), 2u);
  EXPECT_EQ(m.tool_calls[0].name, "get_weather");
  EXPECT_EQ(m.tool_calls[0].arguments, R"({"city": "Paris"})");
  EXPECT_EQ(m.tool_calls[1].arguments, R"({"city": "Ro\"me", "days": 2})");
}

TEST(OutputParser, ToolCallsStreamedAtEveryBoundary) {
  check_all_splits(kTwoCalls, false);
  check_all_splits("hmm</think>" + kTwoCalls, true);
}

TEST(OutputParser, RoundTripsEncodedAssistantTurn) {
  ChatMessage a{.role = "assistant", .content = "Calling."};
  a.reasoning_content = "plan";
  a.tool_calls.push_back(ChatToolCall{"c1", "search", R"({"q": "日本", "n": 3, "opts": {"x": [1, 2]}, "s": ""})"});
  a.tool_calls.push_back(ChatToolCall{"c2", "noop", "{}"});
  ChatEncodeOptions o{.thinking = true, .drop_thinking = false, .add_bos = false};
  const std::string prompt = encode_messages({ChatMessage{.role = "user", .content = "q"}, a}, o);
  const std::string prefix = std::string(tokens::kUser) + "q" + tokens::kAssistant + tokens::kThinkStart;
  ASSERT_EQ(prompt.substr(0, prefix.size()), prefix);
  const std::string completion = prompt.substr(prefix.size());
  const auto m = parse_completion(completion, true);
  EXPECT_EQ(m.reasoning_content, "plan");
  EXPECT_EQ(m.content, "Calling.");
  ASSERT_EQ(m.tool_calls.size(), 2u);
  EXPECT_EQ(m.tool_calls[0].arguments, a.tool_calls[0].arguments);
  EXPECT_EQ(m.tool_calls[1].name, "noop");
  EXPECT_EQ(m.tool_calls[1].arguments, "{}");
  check_all_splits(completion, true);
}

TEST(OutputParser, MalformedMarkupBecomesContent) {
  const std::string bad_flag = "x" + block(invoke("f", "<" + D + "parameter name=\"a\" string=\"maybe\">1</" + D + "parameter>"));
  auto m = parse_completion(bad_flag + kEos, false);
  EXPECT_TRUE(m.tool_calls.empty());
  EXPECT_EQ(m.content, bad_flag);
  check_all_splits(bad_flag + kEos, false);
  // A good call followed by a broken one: the good one stays, the rest is content.
  const std::string mixed = block(invoke("f", param("a", true, "1")) + "\n<" + D + "invoke nam=\"g\">\n</" + D + "invoke>") + kEos;
  m = parse_completion(mixed, false);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, R"({"a": "1"})");
  EXPECT_EQ(m.content.find("\n<" + D + "invoke nam=\"g\""), 0u);
  check_all_splits(mixed, false);
  // string="false" with a non-JSON value is kept as a string.
  m = parse_completion(block(invoke("f", param("a", false, "not json"))) + kEos, false);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, R"({"a": "not json"})");
}

TEST(OutputParser, TruncatedAtEveryLengthNeverThrowsOrLeaksPartialCalls) {
  for (size_t n = 0; n <= kTwoCalls.size(); ++n) {
    const std::string cut = kTwoCalls.substr(0, n);
    ParsedMessage m;
    ASSERT_NO_THROW(m = parse_completion(cut, false));
    for (const auto& c : m.tool_calls) EXPECT_EQ(c.name, "get_weather");
    // Everything is accounted for: content plus the calls' markup covers the input.
    if (m.tool_calls.empty()) EXPECT_EQ(m.content, cut.substr(0, std::min(cut.size(), cut.find(kEos))));
  }
}

TEST(OutputParser, TextAfterEosIsIgnored) {
  const auto m = parse_completion("done" + kEos + "garbage", false);
  EXPECT_EQ(m.content, "done");
}

}  // namespace
}  // namespace clawmine::tokenizer
