// UTF-8 handling, streaming detokenization, added-token flags and load errors, on small
// synthetic tokenizer files and on the V4 tokenizer.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "unit/tokenizer/v4_fixture.h"

namespace clawmine::tokenizer {
namespace {

TEST(Utf8, SanitizeReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_sanitize("abc"), "abc");
  EXPECT_EQ(utf8_sanitize("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(utf8_sanitize("\xe2\x82x"), "\xEF\xBF\xBDx");                     // one subpart
  EXPECT_EQ(utf8_sanitize("\xed\xa0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_sanitize("\xf0\x9f\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(utf8_incomplete_tail("ab\xe2\x82"), 2u);
  EXPECT_EQ(utf8_incomplete_tail("ab\xe2\x82\xac"), 0u);
  EXPECT_EQ(utf8_incomplete_tail("ab\xff"), 0u);
}

// A minimal byte-level tokenizer.json: the 256 byte symbols plus `extra`.
std::string tiny_tokenizer(const std::string& extra_added, const std::string& merges = "[]") {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(static_cast<uint8_t>(b))] = b;
  vocab["ab"] = 256;
  return R"({"normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "decoder": {"type": "ByteLevel"}, "added_tokens": )" + extra_added +
         R"(, "model": {"type": "BPE", "vocab": )" + vocab.dump() + R"(, "merges": )" + merges + "}}";
}

TEST(Tokenizer, AddedTokenFlags) {
  const auto t = Tokenizer::from_strings(
      tiny_tokenizer(R"([{"id": 300, "content": "<X>", "special": true, "lstrip": true, "rstrip": true},
                         {"id": 301, "content": "<Y>", "special": false, "normalized": true},
                         {"id": 302, "content": "<Y>>", "special": true}])",
                     R"(["a b"])"),
      "tiny.json");
  EXPECT_EQ(t.encode("ab  <X>  ab"), (std::vector<int32_t>{256, 300, 256}));
  EXPECT_EQ(t.encode("<Y>>"), (std::vector<int32_t>{302}));
  EXPECT_EQ(t.encode("<Y>"), (std::vector<int32_t>{301}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{300, 256}, true), "ab");
}

TEST(Tokenizer, LoadErrorsNameFileAndField) {
  auto message = [](const std::string& json, const std::string& config = "") {
    try {
      Tokenizer::from_strings(json, "dir/tokenizer.json", config, "dir/tokenizer_config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("{").find("dir/tokenizer.json: invalid JSON"), std::string::npos);
  EXPECT_NE(message(tiny_tokenizer("[]", R"(["a zz"])")).find("field model.merges[0]"), std::string::npos);
  EXPECT_NE(message(tiny_tokenizer(R"([{"id": -1, "content": "x"}])")).find("field added_tokens[0].id"), std::string::npos);
  EXPECT_NE(message(tiny_tokenizer("[]"), R"({"bos_token": "<nope>", "add_bos_token": true})").find("dir/tokenizer_config.json: field bos_token"),
            std::string::npos);
  std::string bad_regex = tiny_tokenizer("[]");
  bad_regex.replace(bad_regex.find(R"({"type": "ByteLevel")"), 0,
                    R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}, )");
  bad_regex.replace(bad_regex.find(R"("use_regex": true})") + 18, 0, "]}");
  EXPECT_NE(message(bad_regex).find("field pre_tokenizer.pretokenizers[0].pattern.Regex"), std::string::npos) << message(bad_regex);
}

TEST(Tokenizer, DecodeRejectsOutOfRangeIds) {
  const auto t = Tokenizer::from_strings(tiny_tokenizer("[]"), "tiny.json");
  EXPECT_THROW(t.decode(std::vector<int32_t>{257}), Error);
  EXPECT_THROW(t.decode(std::vector<int32_t>{-1}), Error);
}

TEST(StreamDecoder, EqualsWholeDecodeForRandomIds) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  const auto& t = test::v4_tokenizer();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any(0, t.vocab_size() - 1), bytes(3, 258);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> ids;
    for (int k = 0; k < 40; ++k) ids.push_back(trial % 2 ? any(rng) : bytes(rng));  // single bytes split characters
    StreamDecoder s(t);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = s.push(id);
      EXPECT_TRUE(utf8_is_valid(piece));
      streamed += piece;
    }
    streamed += s.finish();
    EXPECT_EQ(streamed, t.decode(ids));
  }
}

TEST(Tokenizer, V4SpecialTokensAndRoundTrip) {
  CLAWMINE_REQUIRE_V4_TOKENIZER();
  const auto& t = test::v4_tokenizer();
  EXPECT_EQ(t.vocab_size(), 129280);
  EXPECT_EQ(t.token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(t.token_to_id("<｜end▁of▁sentence｜>"), 1);
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(t.token_to_id("｜DSML｜"), 128825);
  EXPECT_EQ(t.token_to_id("<｜latest_reminder｜>"), 128828);
  EXPECT_EQ(t.token_to_id("<|place_holder_mm_span_0435|>"), 129261);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_FALSE(t.add_bos());
  const std::string text = "<｜begin▁of▁sentence｜>x<｜User｜>Hi<｜Assistant｜><think>ok</think>\n\n<｜DSML｜tool_calls>";
  const auto ids = t.encode(text);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(t.decode(ids), text);
}

}  // namespace
}  // namespace clawmine::tokenizer
