#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace clawmine::runtime {

namespace {

// The largest of v[0, n) (n >= 1, no NaN): eight running maxima, no loop-carried load, so the loop
// runs at about one element per cycle (std::max_element reloads the best value each step: ~4 ns
// per element, ~0.5 ms over a 129280-entry vocabulary).
float max_value(const float* v, int64_t n) {
  float m[8];
  for (float& x : m) x = v[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) m[j] = v[i + j] > m[j] ? v[i + j] : m[j];
  for (; i < n; ++i) m[0] = v[i] > m[0] ? v[i] : m[0];
  float r = m[0];
  for (float x : m) r = x > r ? x : r;
  return r;
}

// Larger logit first, ties to the lower id: the order that top-k, top-p and min-p cut.
struct ByLogit {
  const float* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

}  // namespace

int32_t argmax(const float* logits, int64_t vocab) {
  if (vocab <= 0) return 0;
  const float m = max_value(logits, vocab);
  for (int64_t i = 0; i < vocab; ++i)
    if (logits[i] == m) return static_cast<int32_t>(i);
  int64_t best = 0;  // NaN entries (never equal): the first value no other exceeds
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

NonFiniteLogits non_finite_logits(int64_t id, float value) {
  return NonFiniteLogits(str_cat("non-finite logit (", value, ") at token id ", id, "; refusing to sample"));
}

int64_t first_non_finite(const float* logits, int64_t vocab) {
  constexpr int64_t kBlock = 256;  // a branch-free test per block, the offending block scanned
  for (int64_t b = 0; b < vocab; b += kBlock) {
    const int64_t e = std::min(vocab, b + kBlock);
    bool bad = false;
    for (int64_t i = b; i < e; ++i) bad |= !std::isfinite(logits[i]);
    if (!bad) continue;
    for (int64_t i = b; i < e; ++i)
      if (!std::isfinite(logits[i])) return i;
  }
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
  if (const int64_t bad = first_non_finite(logits, vocab); bad >= 0) throw non_finite_logits(bad, logits[bad]);
  CLAWMINE_CHECK(vocab >= 1 && vocab <= std::numeric_limits<int32_t>::max(), "sample: a vocabulary of ", vocab,
                 " logits");
  z_.assign(logits, logits + vocab);
  for (const auto& [id, n] : counts_)
    if (id >= 0 && id < vocab) z_[id] -= static_cast<float>(n) * params_.frequency_penalty + params_.presence_penalty;
  logprobs_stale_ = true;
  const float* z = z_.data();
  max_z_ = max_value(z, vocab);

  SampledToken out;
  greedy_ = params_.temperature == 0.0f;
  if (greedy_) {
    out.id = argmax(z, vocab);
    double sum = 0;
    const float mz = static_cast<float>(max_z_);
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(z[i] - mz);
    log_sum_ = std::log(sum);
  } else {
    // Weights w = exp((z - max) / T) of the candidates: the top-k by ByLogit (sorted), or every id
    // (in id order). top-p keeps the shortest ByLogit prefix whose share of the candidates' weight
    // reaches top_p (sorted as far as needed, in growing steps), min-p the ids whose weight is at
    // least min_p times the largest (1); the draw walks what is kept in that order.
    const double T = params_.temperature;
    w_.resize(static_cast<size_t>(vocab));
    kept_.resize(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) kept_[i] = static_cast<int32_t>(i);
    const ByLogit by{z};
    int64_t n = vocab, sorted = 0;  // candidates kept_[0, n); kept_[0, sorted) in ByLogit order
    if (params_.top_k > 0 && params_.top_k < vocab) {
      n = params_.top_k;
      std::partial_sort(kept_.begin(), kept_.begin() + n, kept_.end(), by);
      sorted = n;
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += w_[kept_[j]] = std::exp((static_cast<double>(z[kept_[j]]) - max_z_) / T);
    int64_t keep = n;
    if (params_.top_p < 1.0f) {
      double acc = 0;
      for (int64_t j = 0, step = 64; j < n; ++j) {
        if (j == sorted) {  // the next ByLogit run: the largest of the rest, sorted
          const int64_t end = std::min(n, sorted + step);
          std::partial_sort(kept_.begin() + sorted, kept_.begin() + end, kept_.begin() + n, by);
          sorted = end;
          step *= 4;
        }
        acc += w_[kept_[j]] / sum;
        if (acc >= params_.top_p) {
          keep = j + 1;
          break;
        }
      }
    }
    if (params_.min_p > 0.0f) {  // the largest weight is exp(0) = 1
      const double floor = params_.min_p;
      if (keep < n || sorted == n) {  // a ByLogit prefix: its weights do not increase
        int64_t k = 1;
        while (k < keep && w_[kept_[k]] >= floor) ++k;
        keep = k;
      } else {  // every candidate, in id order: the ones at or above the floor
        keep = std::stable_partition(kept_.begin(), kept_.begin() + n, [&](int32_t i) { return w_[i] >= floor; }) -
               kept_.begin();
      }
    }
    kept_.resize(static_cast<size_t>(keep));
    kept_sum_ = 0;
    for (int32_t i : kept_) kept_sum_ += w_[i];
    std::uniform_real_distribution<double> uniform(0.0, kept_sum_);
    double r = uniform(rng_);
    out.id = kept_.back();
    for (int32_t i : kept_) {
      r -= w_[i];
      if (r < 0) {
        out.id = i;
        break;
      }
    }
  }
  out.logprob = logprob(out.id);
  if (n_top > 0) take_top(n_top, out);
  ++counts_[out.id];
  return out;
}

float Sampler::logprob(int32_t id) const {
  if (greedy_) return static_cast<float>(z_[id] - max_z_ - log_sum_);
  return static_cast<float>(std::log(w_[id] / kept_sum_));
}

// The n_top most likely entries of the last distribution, descending (ties to the lower id).
void Sampler::take_top(int64_t n_top, SampledToken& out) {
  const ByLogit by{z_.data()};
  std::vector<int32_t> ids;
  if (greedy_) {
    ids.resize(z_.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  } else {
    ids = kept_;
  }
  const auto m = static_cast<std::ptrdiff_t>(std::min<size_t>(static_cast<size_t>(n_top), ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + m, ids.end(), by);
  for (std::ptrdiff_t i = 0; i < m; ++i) out.top.push_back({ids[static_cast<size_t>(i)], logprob(ids[static_cast<size_t>(i)])});
}

const std::vector<float>& Sampler::last_logprobs() const {
  if (logprobs_stale_) {
    logprobs_.assign(z_.size(), -std::numeric_limits<float>::infinity());
    if (greedy_) {
      for (size_t i = 0; i < z_.size(); ++i) logprobs_[i] = logprob(static_cast<int32_t>(i));
    } else {
      for (int32_t i : kept_) logprobs_[static_cast<size_t>(i)] = logprob(i);
    }
    logprobs_stale_ = false;
  }
  return logprobs_;
}

}  // namespace clawmine::runtime
