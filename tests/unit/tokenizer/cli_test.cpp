// The tokenizer subcommands of the real `clawmine` binary against the V4 tokenizer.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "support/test_support.h"
#include "unit/tokenizer/v4_fixture.h"

namespace clawmine::test {
namespace {

std::string model_arg() { return " --model '" + v4_tokenizer_dir()->string() + "'"; }

TEST(TokenizerCli, TokenizeAndDetokenizeRoundTrip) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  const auto r = run_command(clawmine_binary().string() + " tokenize" + model_arg() + " --text 'Hello, 世界 <think>'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto ids = nlohmann::json::parse(r.out).get<std::vector<int32_t>>();
  EXPECT_EQ(ids, v4_tokenizer().encode("Hello, 世界 <think>"));
  std::string csv;
  for (int32_t id : ids) csv += (csv.empty() ? "" : ",") + std::to_string(id);
  const auto d = run_command(clawmine_binary().string() + " detokenize" + model_arg() + " --ids " + csv);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "Hello, 世界 <think>\n");
}

TEST(TokenizerCli, ChatTemplatePrintsPromptAndIds) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  TempDir tmp;
  const auto file = tmp.path() / "m.json";
  std::ofstream(file) << R"([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])";
  const auto r = run_command(clawmine_binary().string() + " chat-template" + model_arg() + " --messages '" +
                             file.string() + "' --thinking --reasoning-effort high");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string prompt = "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜><think>";
  ASSERT_EQ(r.out.substr(0, prompt.size() + 1), prompt + "\n");
  const auto ids = nlohmann::json::parse(r.out.substr(prompt.size() + 1)).get<std::vector<int32_t>>();
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 128821);
}

// Tools without a system message: a system turn is inserted to carry them, before the user's turn.
TEST(TokenizerCli, ChatTemplateToolsGetASystemTurn) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  TempDir tmp;
  const auto messages = tmp.path() / "m.json", tools = tmp.path() / "t.json";
  std::ofstream(messages) << R"([{"role": "user", "content": "Weather?"}])";
  std::ofstream(tools) << R"([{"type": "function", "function": {"name": "get_weather", "description": "d",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])";
  const auto r = run_command(clawmine_binary().string() + " chat-template" + model_arg() + " --messages '" +
                             messages.string() + "' --tools '" + tools.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string bos = "<｜begin▁of▁sentence｜>";
  ASSERT_EQ(r.out.substr(0, bos.size()), bos);
  const size_t tool = r.out.find("get_weather"), user = r.out.find("<｜User｜>Weather?");
  ASSERT_NE(tool, std::string::npos) << r.out;
  ASSERT_NE(user, std::string::npos) << r.out;
  EXPECT_LT(tool, user) << r.out;
}

TEST(TokenizerCli, MalformedTokenizerNamesFileAndField) {
  TempDir tmp;
  std::ofstream(tmp.path() / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}})";
  const auto r = run_command(clawmine_binary().string() + " tokenize --model '" + tmp.path().string() + "' --text x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("tokenizer.json"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("model.vocab"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace clawmine::test
