// Token sampling from one row of logits: temperature, top-k, top-p (nucleus), seeded.
// temperature 0 is greedy (argmax, lowest id on ties). The probabilities it samples from are
// returned too, so logprobs always describe the distribution that was actually sampled.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace clawmine::runtime {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;        // (0, 1]
  int64_t top_k = 0;         // 0: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits [vocab]; throws clawmine::Error if any logit is NaN (never samples from garbage).
  int32_t sample(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

// argmax with ties to the lowest id.
int32_t argmax(const float* logits, int64_t vocab);

}  // namespace clawmine::runtime
