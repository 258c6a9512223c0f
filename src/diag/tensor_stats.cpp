#include "diag/tensor_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace clawmine::diag {

double TensorStats::mean() const { return finite ? sum / static_cast<double>(finite) : 0.0; }
double TensorStats::rms() const { return finite ? std::sqrt(sum_sq / static_cast<double>(finite)) : 0.0; }

nlohmann::json TensorStats::to_json() const {
  return {{"amax", amax}, {"rms", rms()}, {"mean", mean()}, {"nan", nan}, {"inf", inf}, {"n", count}};
}

void TensorStats::merge(const TensorStats& o) {
  count += o.count;
  nan += o.nan;
  inf += o.inf;
  amax = std::max(amax, o.amax);
  sum += o.sum;
  sum_sq += o.sum_sq;
  finite += o.finite;
}

TensorStats tensor_stats(const float* x, int64_t n, bool neg_inf_ok) {
  TensorStats s;
  s.count = n;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (std::isnan(v)) {
      ++s.nan;
    } else if (std::isinf(v)) {
      if (!(neg_inf_ok && v < 0)) ++s.inf;
    } else {
      s.amax = std::max(s.amax, std::fabs(v));
      s.sum += v;
      s.sum_sq += static_cast<double>(v) * v;
      ++s.finite;
    }
  }
  return s;
}

Agreement agreement(const float* a, const float* b, int64_t n) {
  double ab = 0, aa = 0, bb = 0, dd = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = a[i], y = b[i];
    if (!std::isfinite(x) || !std::isfinite(y)) {
      const double q = std::numeric_limits<double>::quiet_NaN();
      return {q, q};
    }
    ab += x * y;
    aa += x * x;
    bb += y * y;
    dd += (x - y) * (x - y);
  }
  Agreement r;
  if (aa == 0 && bb == 0) return r;
  r.cosine = (aa > 0 && bb > 0) ? ab / std::sqrt(aa * bb) : 0.0;
  r.rel_err = bb > 0 ? std::sqrt(dd / bb) : std::sqrt(dd);
  return r;
}

}  // namespace clawmine::diag
