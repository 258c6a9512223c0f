// Token ids against two independent implementations: the npm package's JavaScript tokenizer on
// a generated corpus, and HF `tokenizers` goldens committed under tests/fixtures/tokenizer/.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "support/test_support.h"
#include "tokenizer/tokenizer.h"
#include "unit/tokenizer/v4_fixture.h"

namespace clawmine::test {
namespace {

std::string show_ids(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

TEST(TokenizerParity, MatchesJavaScriptTokenizerOnGeneratedCorpus) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  TempDir tmp;
  const auto corpus = tmp.path() / "corpus.json";
  std::string out;
  const std::string script = (source_dir() / "tools/tokenizer/js_parity_corpus.js").string();
  ASSERT_EQ(run_node("'" + script + "' '" + v4_tokenizer_dir()->string() + "' '" + corpus.string() + "' 3000 1234", &out), 0) << out;
  std::ifstream in(corpus);
  const auto rows = nlohmann::json::parse(in);
  ASSERT_EQ(rows.size(), 3000u);
  const auto& tok = v4_tokenizer();
  size_t failures = 0, bytes = 0;
  for (const auto& row : rows) {
    const std::string text = row["text"];
    bytes += text.size();
    const auto expected = row["ids"].get<std::vector<int32_t>>();
    const auto ids = tok.encode(text);
    if (ids != expected && ++failures <= 10) {
      ADD_FAILURE() << "text " << nlohmann::json(text).dump() << "\n ours " << show_ids(ids) << "\n   js " << show_ids(expected);
    }
    EXPECT_EQ(tok.decode(ids), text);
  }
  EXPECT_EQ(failures, 0u) << "of " << rows.size() << " strings (" << bytes << " bytes)";
}

TEST(TokenizerParity, MatchesHfTokenizersGoldens) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  const auto path = fixture_dir("tokenizer/hf_goldens.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no goldens at " << path << " (tools/reference/tokenizer_goldens.py)";
  std::ifstream in(path);
  const auto doc = nlohmann::json::parse(in);
  const auto& tok = v4_tokenizer();
  size_t failures = 0, count = 0;
  for (const auto& row : doc["cases"]) {
    // "bytes_hex" rows hold raw (possibly invalid UTF-8) input; "text" rows valid text.
    std::string input;
    if (row.contains("bytes_hex")) {
      const std::string hex = row["bytes_hex"];
      for (size_t i = 0; i + 1 < hex.size(); i += 2) input.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    } else {
      input = row["text"];
    }
    const auto expected = row["ids"].get<std::vector<int32_t>>();
    const auto ids = tok.encode(input);
    ++count;
    if (ids != expected && ++failures <= 10) {
      ADD_FAILURE() << "input " << nlohmann::json(row).dump() << "\n ours " << show_ids(ids);
    }
    if (!row.contains("bytes_hex")) EXPECT_EQ(tok.decode(ids), input);
    if (row.contains("decoded")) EXPECT_EQ(tok.decode(ids), row["decoded"].get<std::string>());
  }
  EXPECT_GT(count, 1000u);
  EXPECT_EQ(failures, 0u) << "of " << count << " goldens";
}

}  // namespace
}  // namespace clawmine::test
