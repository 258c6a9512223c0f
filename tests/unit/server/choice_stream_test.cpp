// A choice's token → delta pipeline on the demo tokenizer: DSML tool calls in generated tokens
// come out as tool_calls (content before them as content), and stop strings cut the text.
#include <gtest/gtest.h>

#include "server/choice_stream.h"

namespace clawmine::server {
namespace {

const tokenizer::Tokenizer& demo_tokenizer() {
  static const auto tok = tokenizer::Tokenizer::load(std::string(CLAWMINE_SOURCE_DIR) + "/tests/fixtures/models/tiny-a");
  return tok;
}

ChoiceDelta run(ChoiceStream& s, const std::string& text) {
  ChoiceDelta all;
  auto add = [&](ChoiceDelta d) {
    all.text += d.text;
    all.chat.content += d.chat.content;
    all.chat.reasoning_content += d.chat.reasoning_content;
    for (auto& c : d.chat.tool_calls) all.chat.tool_calls.push_back(c);
  };
  for (int32_t id : demo_tokenizer().encode(text)) {
    runtime::SampledToken t;
    t.id = id;
    add(s.push(t));
  }
  add(s.finish());
  return all;
}

TEST(ChoiceStream, DsmlToolCallsBecomeToolCalls) {
  ChoiceStream s(demo_tokenizer(), /*chat=*/true, /*thinking=*/true, {}, 1);
  const std::string text =
      "plan it</think>Checking.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  const ChoiceDelta d = run(s, text);
  EXPECT_EQ(d.chat.reasoning_content, "plan it");
  EXPECT_EQ(d.chat.content, "Checking.");
  ASSERT_EQ(d.chat.tool_calls.size(), 1u);
  EXPECT_EQ(d.chat.tool_calls[0].second.name, "get_weather");
  EXPECT_EQ(d.chat.tool_calls[0].second.arguments, "{\"city\": \"Paris\"}");
  EXPECT_TRUE(s.has_tool_calls());
}

TEST(ChoiceStream, StopStringCutsCompletionText) {
  ChoiceStream s(demo_tokenizer(), /*chat=*/false, false, {"model"}, 1);
  EXPECT_EQ(run(s, "the attention model is small").text, "the attention ");
  EXPECT_TRUE(s.stopped());
}

}  // namespace
}  // namespace clawmine::server
