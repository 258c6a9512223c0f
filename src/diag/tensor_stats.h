// Summary statistics of a float32 tensor for traces and reports: count, amax, mean, RMS over the
// finite values, and NaN / Inf counts. Tensors that legitimately carry -inf (masked scores) are
// measured with neg_inf_ok, which neither counts nor sums their -inf entries.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

namespace clawmine::diag {

struct TensorStats {
  int64_t count = 0;   // values seen
  int64_t nan = 0;
  int64_t inf = 0;     // +-inf (only +inf with neg_inf_ok)
  float amax = 0.0f;   // max |x| over finite values
  double sum = 0.0, sum_sq = 0.0;
  int64_t finite = 0;  // finite values summed

  bool all_finite() const { return nan == 0 && inf == 0; }
  double mean() const;
  double rms() const;
  nlohmann::json to_json() const;  // {"amax", "rms", "mean", "nan", "inf", "n"}
  void merge(const TensorStats& o);
};

// x [n].
TensorStats tensor_stats(const float* x, int64_t n, bool neg_inf_ok = false);

// Cosine similarity and relative L2 error ||a - b|| / ||b|| of two vectors (b the reference), in
// double. NaN when either has a non-finite value; cosine 1 when both are all zero.
struct Agreement {
  double cosine = 1.0;
  double rel_err = 0.0;
};
Agreement agreement(const float* a, const float* b, int64_t n);

}  // namespace clawmine::diag
