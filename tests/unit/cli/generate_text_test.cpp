// `clawmine generate` with a tokenizer in the model directory: text in (--text, --chat), text out,
// and the same ids as the id-based form; without a tokenizer --text is a clear error.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace clawmine {
namespace {

std::string demo() { return (test::source_dir() / "models" / "demo").string(); }

TEST(GenerateCli, TextPromptGivesTextAndMatchesIdPrompt) {
  const auto bin = test::clawmine_binary().string();
  const auto r = test::run_command(bin + " generate --model " + demo() +
                                   " --text 'The Debian project' --max-tokens 12 --temperature 0 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const auto prompt = j.at("prompt").get<std::vector<int32_t>>();
  ASSERT_GE(prompt.size(), 2u);
  EXPECT_EQ(prompt[0], 0);  // BOS
  EXPECT_FALSE(j.at("text").get<std::string>().empty());
  std::string ids;
  for (int32_t id : prompt) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const auto r2 = test::run_command(bin + " generate --model " + demo() + " --ids " + ids +
                                    " --max-tokens 12 --temperature 0 --json");
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(nlohmann::json::parse(r2.out).at("tokens"), j.at("tokens"));
}

TEST(GenerateCli, ChatPromptUsesTheV4ChatEncoding) {
  const auto r = test::run_command(test::clawmine_binary().string() + " generate --model " + demo() +
                                   " --text 'What is Debian?' --chat --max-tokens 8 --temperature 0 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto prompt = nlohmann::json::parse(r.out).at("prompt").get<std::vector<int32_t>>();
  EXPECT_EQ(prompt.front(), 0);  // <｜begin▁of▁sentence｜>
  EXPECT_GE(prompt.size(), 5u);  // ... <｜User｜> text <｜Assistant｜> </think>
}

TEST(GenerateCli, TextWithoutTokenizerIsAnError) {
  const auto r = test::run_command(test::clawmine_binary().string() + " generate --model " +
                                   test::fixture_dir("models/tiny-c").string() + " --text hi");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("tokenizer.json"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace clawmine
