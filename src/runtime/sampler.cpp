#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace clawmine::runtime {

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  CLAWMINE_CHECK(params.temperature >= 0 && std::isfinite(params.temperature), "temperature must be >= 0, got ",
                 params.temperature);
  CLAWMINE_CHECK(params.top_p > 0 && params.top_p <= 1, "top_p must be in (0, 1], got ", params.top_p);
  CLAWMINE_CHECK(params.top_k >= 0, "top_k must be >= 0, got ", params.top_k);
}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  for (int64_t i = 0; i < vocab; ++i)
    if (std::isnan(logits[i])) throw Error(str_cat("non-finite logit (NaN) at token id ", i, "; refusing to sample"));
  if (params_.temperature == 0.0f) return argmax(logits, vocab);

  // Candidates sorted by logit (descending, ties by id), cut by top-k, softmax at temperature, cut by top-p.
  scratch_.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) scratch_[i] = {logits[i], static_cast<int32_t>(i)};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  int64_t n = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    n = params_.top_k;
    std::partial_sort(scratch_.begin(), scratch_.begin() + n, scratch_.end(), by_logit);
  } else {
    std::sort(scratch_.begin(), scratch_.end(), by_logit);
  }
  const double max_logit = scratch_[0].first;
  std::vector<double> p(static_cast<size_t>(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i] = std::exp((scratch_[i].first - max_logit) / params_.temperature);
  int64_t keep = n;
  if (params_.top_p < 1.0f) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      acc += p[i] / sum;
      if (acc >= params_.top_p) { keep = i + 1; break; }
    }
  }
  double kept = 0;
  for (int64_t i = 0; i < keep; ++i) kept += p[i];
  std::uniform_real_distribution<double> uniform(0.0, kept);
  double r = uniform(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return scratch_[i].second;
  }
  return scratch_[keep - 1].second;
}

}  // namespace clawmine::runtime
