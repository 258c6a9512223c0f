#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace clawmine::runtime {

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

int64_t first_non_finite(const float* logits, int64_t vocab) {
  for (int64_t i = 0; i < vocab; ++i)
    if (!std::isfinite(logits[i])) return i;
  return -1;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  CLAWMINE_CHECK(params.temperature >= 0 && std::isfinite(params.temperature), "temperature must be >= 0, got ",
                 params.temperature);
  CLAWMINE_CHECK(params.top_p > 0 && params.top_p <= 1, "top_p must be in (0, 1], got ", params.top_p);
  CLAWMINE_CHECK(params.top_k >= 0, "top_k must be >= 0, got ", params.top_k);
  CLAWMINE_CHECK(params.min_p >= 0 && params.min_p <= 1, "min_p must be in [0, 1], got ", params.min_p);
  CLAWMINE_CHECK(std::isfinite(params.presence_penalty) && std::isfinite(params.frequency_penalty),
                 "penalties must be finite");
}

SampledToken Sampler::sample(const float* logits, int64_t vocab, int64_t n_top) {
  if (const int64_t bad = first_non_finite(logits, vocab); bad >= 0)
    throw NonFiniteLogits(str_cat("non-finite logit (", logits[bad], ") at token id ", bad, "; refusing to sample"));
  z_.assign(logits, logits + vocab);
  for (const auto& [id, n] : counts_)
    if (id >= 0 && id < vocab) z_[id] -= static_cast<float>(n) * params_.frequency_penalty + params_.presence_penalty;
  logprobs_.assign(static_cast<size_t>(vocab), -std::numeric_limits<float>::infinity());

  SampledToken out;
  if (params_.temperature == 0.0f) {
    out.id = argmax(z_.data(), vocab);
    const double max_z = z_[out.id];
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(z_[i]) - max_z);
    const double log_sum = std::log(sum);
    for (int64_t i = 0; i < vocab; ++i) logprobs_[i] = static_cast<float>(z_[i] - max_z - log_sum);
  } else {
    // Candidates sorted by logit (descending, ties by id), cut by top-k, softmax at temperature,
    // cut by top-p then min-p, renormalized.
    scratch_.resize(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) scratch_[i] = {z_[i], static_cast<int32_t>(i)};
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
    if (params_.min_p > 0.0f) {
      int64_t k = 1;
      while (k < keep && p[k] >= params_.min_p * p[0]) ++k;
      keep = k;
    }
    double kept = 0;
    for (int64_t i = 0; i < keep; ++i) kept += p[i];
    std::uniform_real_distribution<double> uniform(0.0, kept);
    double r = uniform(rng_);
    out.id = scratch_[keep - 1].second;
    for (int64_t i = 0; i < keep; ++i) {
      r -= p[i];
      if (r < 0) { out.id = scratch_[i].second; break; }
    }
    for (int64_t i = 0; i < keep; ++i) logprobs_[scratch_[i].second] = static_cast<float>(std::log(p[i] / kept));
  }
  out.logprob = logprobs_[out.id];
  if (n_top > 0) {
    std::vector<TokenLogprob> all;
    all.reserve(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i)
      if (std::isfinite(logprobs_[i])) all.push_back({static_cast<int32_t>(i), logprobs_[i]});
    const auto m = std::min<size_t>(static_cast<size_t>(n_top), all.size());
    std::partial_sort(all.begin(), all.begin() + m, all.end(), [](const auto& a, const auto& b) {
      return a.logprob > b.logprob || (a.logprob == b.logprob && a.id < b.id);
    });
    out.top.assign(all.begin(), all.begin() + m);
  }
  ++counts_[out.id];
  return out;
}

}  // namespace clawmine::runtime
