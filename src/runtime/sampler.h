// Token sampling from one row of logits: presence/frequency penalties, temperature, top-k,
// top-p (nucleus), min-p, seeded. temperature 0 is greedy (argmax, lowest id on ties). The
// distribution a token was drawn from is returned with it, so logprobs always describe what was
// actually sampled (greedy: the penalized softmax at temperature 1). NaN/Inf logits never get
// sampled: they throw NonFiniteLogits.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "core/error.h"

namespace clawmine::runtime {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;        // (0, 1]
  int64_t top_k = 0;         // 0: off
  float min_p = 0.0f;        // [0, 1]: drop tokens with p < min_p * p_max
  float presence_penalty = 0.0f;   // [-2, 2], OpenAI semantics over generated tokens
  float frequency_penalty = 0.0f;  // [-2, 2]
  uint64_t seed = 0;
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

struct SampledToken {
  int32_t id = 0;
  float logprob = 0;               // of `id` in the sampled distribution
  std::vector<TokenLogprob> top;   // the n most likely of that distribution, descending
};

// A logit row had NaN or Inf; names the first offending id.
class NonFiniteLogits : public Error {
 public:
  using Error::Error;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits [vocab]; records the token for the penalties.
  int32_t sample(const float* logits, int64_t vocab) { return sample(logits, vocab, 0).id; }
  // logits [vocab]; n_top most likely entries of the sampled distribution come back too.
  SampledToken sample(const float* logits, int64_t vocab, int64_t n_top);
  // Full-vocabulary log-probabilities of the distribution the last sample() drew from
  // (-inf for tokens cut by top-k/top-p/min-p); for tests (made on demand: sample() itself
  // computes the log-probabilities of the returned entries only).
  const std::vector<float>& last_logprobs() const;

 private:
  float logprob(int32_t id) const;  // of the last sample()'s distribution; id must be kept
  void take_top(int64_t n_top, SampledToken& out);
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int64_t> counts_;  // generated token → occurrences
  std::vector<float> z_;                          // penalized logits
  // The last sample()'s distribution: greedy, the softmax of z_ at temperature 1 (max_z_,
  // log_sum_); sampled, weights w_[id] = exp((z - max) / T) (float, exp_weights) over the kept ids
  // (kept_, in the order the draw walked them), their sum kept_sum_ and its log log_sum_; a
  // logprob is (z - max) / T - log_sum_ in double.
  bool greedy_ = false;
  double max_z_ = 0, log_sum_ = 0, kept_sum_ = 0;
  std::vector<float> w_;
  std::vector<double> block_sums_;  // exp_weights' block sums over every id (the draw skips blocks)
  std::vector<int32_t> kept_;
  mutable std::vector<float> logprobs_;  // [vocab], made by last_logprobs()
  mutable bool logprobs_stale_ = true;
};

// The error for a non-finite logit `value` at token id `id` (the sampler's, and the backend
// greedy paths').
NonFiniteLogits non_finite_logits(int64_t id, float value);
// Greedy without penalties: the token is the first maximum of the logits alone, so it may be taken
// where the logits are (Model::forward_greedy).
inline bool greedy_without_penalties(const SamplingParams& p) {
  return p.temperature == 0 && p.presence_penalty == 0 && p.frequency_penalty == 0;
}

// argmax with ties to the lowest id.
int32_t argmax(const float* logits, int64_t vocab);
// Index of the first NaN/Inf in logits [vocab], or -1.
int64_t first_non_finite(const float* logits, int64_t vocab);

}  // namespace clawmine::runtime
