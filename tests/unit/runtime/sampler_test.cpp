// The sampler's cuts (top-k, top-p, min-p, alone and together) against a direct reference that
// sorts the whole vocabulary: the same kept tokens with the same log-probabilities, the drawn token
// among them; small vocabularies make top-p sort in several steps, large ones take the binned
// top-p (flat rows with most ids kept, peaked rows, rows whose weights fall below the float
// exponential's range), exact ties at the cut boundaries check the lower-id rule. Plus the fast
// argmax and non-finite scan against plain loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/sampler.h"

namespace clawmine::runtime {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The distribution of one draw as the definition reads: every id sorted by (logit desc, id asc),
// top-k, softmax at T, top-p prefix, min-p prefix, renormalized; -inf for ids cut.
std::vector<double> reference(const std::vector<float>& z, const SamplingParams& p) {
  const int64_t V = static_cast<int64_t>(z.size());
  std::vector<int32_t> ord(static_cast<size_t>(V));
  std::iota(ord.begin(), ord.end(), 0);
  std::sort(ord.begin(), ord.end(), [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  const int64_t n = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  std::vector<double> w(static_cast<size_t>(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += w[i] = std::exp((static_cast<double>(z[ord[i]]) - z[ord[0]]) / p.temperature);
  int64_t keep = n;
  if (p.top_p < 1.0f) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      acc += w[i] / sum;
      if (acc >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  int64_t k = 1;
  while (p.min_p > 0 && k < keep && w[k] >= p.min_p * w[0]) ++k;
  if (p.min_p > 0) keep = k;
  double kept = 0;
  for (int64_t i = 0; i < keep; ++i) kept += w[i];
  std::vector<double> lp(static_cast<size_t>(V), -std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < keep; ++i) lp[ord[i]] = std::log(w[i] / kept);
  return lp;
}

std::vector<float> logits(int64_t V, float stddev, uint32_t seed, bool ties) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, stddev);
  std::vector<float> z(static_cast<size_t>(V));
  for (float& x : z) x = normal(rng);
  if (ties)
    for (size_t i = 0; i < z.size(); i += 3) z[i] = std::round(z[i]);  // many exact ties
  return z;
}

TEST(SamplerCuts, KeepTheReferenceTokensWithItsLogprobs) {
  struct Case {
    float t, top_p;
    int64_t top_k;
    float min_p;
  };
  const Case cases[] = {{1.0f, 1.0f, 0, 0.0f},   {0.7f, 0.95f, 0, 0.0f}, {1.3f, 0.5f, 0, 0.0f},  {0.8f, 1.0f, 40, 0.0f},
                        {0.8f, 0.9f, 40, 0.0f},  {1.0f, 1.0f, 0, 0.05f}, {0.6f, 0.9f, 0, 0.02f}, {1.0f, 0.8f, 100, 0.1f},
                        {2.0f, 0.99f, 0, 0.0f}};
  uint32_t seed = 7;
  for (const int64_t V : {int64_t{50}, int64_t{5000}, int64_t{129280}}) {
    // flat (top-p sorts far), peaked, and spread so far that most weights are below the float
    // exponential's range (arguments to ~-450: the weights clamp at e^-87, the logprobs come from
    // the logits)
    for (const float stddev : {0.3f, 3.0f, 30.0f}) {
      const std::vector<float> z = logits(V, stddev, seed++, stddev > 1);
      for (const Case& c : cases) {
        SCOPED_TRACE(testing::Message() << "V " << V << " sd " << stddev << " T " << c.t << " top_p " << c.top_p
                                        << " top_k " << c.top_k << " min_p " << c.min_p);
        SamplingParams p;
        p.temperature = c.t;
        p.top_p = c.top_p;
        p.top_k = c.top_k;
        p.min_p = c.min_p;
        p.seed = seed;
        Sampler s(p);
        const SampledToken t = s.sample(z.data(), V, 5);
        const std::vector<double> ref = reference(z, p);
        const std::vector<float>& got = s.last_logprobs();
        ASSERT_EQ(got.size(), ref.size());
        int64_t wrong = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
          if (std::isinf(ref[i]) != std::isinf(got[i])) ++wrong;
          else if (!std::isinf(ref[i]) && std::fabs(got[i] - ref[i]) > 1e-5 * (1 + std::fabs(ref[i]))) ++wrong;
        }
        EXPECT_EQ(wrong, 0);
        EXPECT_TRUE(std::isfinite(ref[static_cast<size_t>(t.id)])) << "drew a cut token " << t.id;
        EXPECT_EQ(t.logprob, got[static_cast<size_t>(t.id)]);
        ASSERT_FALSE(t.top.empty());
        for (size_t i = 1; i < t.top.size(); ++i) EXPECT_GE(t.top[i - 1].logprob, t.top[i].logprob);
        // The alternatives: the reference's most likely kept ids, ties to the lower id.
        std::vector<int32_t> best;
        for (size_t i = 0; i < ref.size(); ++i)
          if (std::isfinite(ref[i])) best.push_back(static_cast<int32_t>(i));
        std::stable_sort(best.begin(), best.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
        best.resize(std::min<size_t>(best.size(), 5));
        ASSERT_EQ(t.top.size(), best.size());
        for (size_t i = 0; i < best.size(); ++i) EXPECT_EQ(t.top[i].id, best[i]) << i;
      }
    }
  }
}

TEST(SamplerCuts, GreedyReportsTheSoftmaxAtTemperatureOne) {
  for (const int64_t V : {int64_t{50}, int64_t{129280}}) {
    for (const float stddev : {0.3f, 3.0f}) {
      const std::vector<float> z = logits(V, stddev, static_cast<uint32_t>(V) + 3, true);
      Sampler s(SamplingParams{.temperature = 0.0f});
      const SampledToken t = s.sample(z.data(), V, 3);
      const double mx = *std::max_element(z.begin(), z.end());
      double sum = 0;
      for (float x : z) sum += std::exp(static_cast<double>(x) - mx);
      EXPECT_EQ(t.id, std::max_element(z.begin(), z.end()) - z.begin());
      const std::vector<float>& got = s.last_logprobs();
      double worst = 0;
      for (int64_t i = 0; i < V; ++i)
        worst = std::max(worst, std::fabs(got[static_cast<size_t>(i)] - (z[static_cast<size_t>(i)] - mx - std::log(sum))));
      EXPECT_LT(worst, 2e-5) << "V " << V << " sd " << stddev;
      ASSERT_EQ(t.top.size(), 3u);
      EXPECT_EQ(t.top[0].id, t.id);
    }
  }
}

TEST(SamplerCuts, DrawsFollowTheDistribution) {
  // Three tokens of weights 1, e^-1, e^-2 at T = 1: frequencies within 2% of 0.665, 0.245, 0.090.
  const std::vector<float> z = {0.0f, -1.0f, -2.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 11;
  Sampler s(p);
  std::vector<int> n(3, 0);
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) ++n[static_cast<size_t>(s.sample(z.data(), 3))];
  const double sum = 1 + std::exp(-1.0) + std::exp(-2.0);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(n[i] / double(draws), std::exp(-double(i)) / sum, 0.02) << i;
}

TEST(SamplerCuts, DrawsAcrossTheWholeVocabularyFollowTheDistribution) {
  // A V4 vocabulary with the mass on ids 5 and 100000 (weights 1 and e^-1) and the rest at e^-30:
  // the draw skips whole blocks of weights before it walks one (temperature 1, no cuts).
  std::vector<float> z(129280, -30.0f);
  z[5] = 0.0f;
  z[100000] = -1.0f;
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 5;
  Sampler s(p);
  int a = 0, b = 0;
  const int draws = 4000;
  for (int i = 0; i < draws; ++i) {
    const int32_t id = s.sample(z.data(), static_cast<int64_t>(z.size()));
    a += id == 5;
    b += id == 100000;
  }
  const double rest = 129278 * std::exp(-30.0), sum = 1 + std::exp(-1.0) + rest;
  EXPECT_NEAR(a / double(draws), 1 / sum, 0.03);
  EXPECT_NEAR(b / double(draws), std::exp(-1.0) / sum, 0.03);
  EXPECT_EQ(a + b, draws);
}

TEST(SamplerScan, ArgmaxAndNonFiniteMatchPlainLoops) {
  for (const int64_t V : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{1000}, int64_t{129280}}) {
    std::vector<float> z = logits(V, 2.0f, static_cast<uint32_t>(V), true);
    if (V > 8) z[static_cast<size_t>(V / 2)] = z[static_cast<size_t>(V - 2)] = 1e6f;  // a tie at the top
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (z[i] > z[best]) best = i;
    EXPECT_EQ(argmax(z.data(), V), best) << V;
    EXPECT_EQ(first_non_finite(z.data(), V), -1);
    z[static_cast<size_t>(V - 1)] = std::nanf("");
    if (V > 3) z[static_cast<size_t>(V / 3)] = kNegInf;
    EXPECT_EQ(first_non_finite(z.data(), V), V > 3 ? V / 3 : V - 1) << V;
  }
}

}  // namespace
}  // namespace clawmine::runtime
