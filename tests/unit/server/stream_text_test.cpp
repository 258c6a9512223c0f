// SSE framing, stop strings held back across pieces, and the sampler's distribution (full-vocab
// probabilities sum to 1; the chosen token's logprob is its top entry; NaN/Inf never sampled).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "runtime/sampler.h"
#include "server/sse.h"
#include "server/stop_matcher.h"

namespace clawmine::server {
namespace {

TEST(Sse, Framing) {
  EXPECT_EQ(sse_event(nlohmann::ordered_json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(std::string(kSseDone), "data: [DONE]\n\n");
  EXPECT_EQ(dump_json(nlohmann::ordered_json{{"t", std::string("\xe2\x82")}}), "{\"t\":\"\xef\xbf\xbd\"}");
}

TEST(StopMatcher, NeverEmitsAStopSplitAcrossPieces) {
  StopMatcher m({"STOP", "xyz"});
  std::string out;
  for (const char* piece : {"hello S", "T", "O", "x"}) out += m.feed(piece);
  EXPECT_EQ(out, "hello STO");  // "STO" released once "x" rules out "STOP"; "x" may start "xyz"
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.finish(), "x");
  StopMatcher k({"STOP"});
  EXPECT_EQ(k.feed("abc ST"), "abc ");
  EXPECT_EQ(k.feed("OP and more"), "");
  EXPECT_TRUE(k.stopped());
  EXPECT_EQ(k.finish(), "");
  StopMatcher f({"end"});
  EXPECT_EQ(f.feed("the en"), "the ");
  EXPECT_EQ(f.finish(), "en");
}

TEST(Sampler, FullVocabDistributionSumsToOneAndMatchesTheChoice) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 3);
  std::vector<float> logits(512);
  for (auto& x : logits) x = normal(rng);
  for (float temperature : {0.0f, 0.7f, 1.3f}) {
    runtime::SamplingParams p;
    p.temperature = temperature;
    p.top_p = temperature > 1 ? 0.9f : 1.0f;
    p.min_p = temperature == 0.7f ? 0.01f : 0.0f;
    runtime::Sampler s(p);
    for (int step = 0; step < 5; ++step) {
      const auto t = s.sample(logits.data(), 512, 20);
      double sum = 0;
      for (float lp : s.last_logprobs()) sum += std::isfinite(lp) ? std::exp(static_cast<double>(lp)) : 0.0;
      EXPECT_NEAR(sum, 1.0, 1e-5) << temperature;
      EXPECT_FLOAT_EQ(t.logprob, s.last_logprobs()[t.id]);
      ASSERT_FALSE(t.top.empty());
      for (size_t i = 1; i < t.top.size(); ++i) EXPECT_GE(t.top[i - 1].logprob, t.top[i].logprob);
      if (temperature == 0) EXPECT_EQ(t.id, t.top[0].id);
    }
  }
}

TEST(Sampler, PenaltiesAndNonFinite) {
  std::vector<float> logits = {1.0f, 1.5f, 0.0f};
  runtime::SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 1.0f;
  runtime::Sampler s(p);
  EXPECT_EQ(s.sample(logits.data(), 3), 1);
  EXPECT_EQ(s.sample(logits.data(), 3), 0);  // 1.5 - 1 < 1.0
  logits[2] = NAN;
  EXPECT_THROW(s.sample(logits.data(), 3), runtime::NonFiniteLogits);
  logits[2] = INFINITY;
  EXPECT_THROW(s.sample(logits.data(), 3), runtime::NonFiniteLogits);
}

}  // namespace
}  // namespace clawmine::server
