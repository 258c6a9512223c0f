#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

// exp(x) for x <= 0, one vector of lanes at once (GCC/Clang vector extensions): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by Cephes expf's degree-6 polynomial (within 1.4 ulp of exp over [-87, 0]),
// times 2^n built in the exponent bits; x below -87 is taken as -87 (a weight of ~1e-38 instead
// of a smaller one or 0: the sums do not see it, and logprobs come from the logits). Branch-free,
// no contraction into FMAs (ISO C++ mode): every lane width gives the same bits.
using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));
using F8 = float __attribute__((vector_size(32)));
using I8 = int32_t __attribute__((vector_size(32)));
// (By reference: no call passes a 32-byte vector by value, whose calling convention differs with
// and without AVX.)
template <typename F, typename I>
[[gnu::always_inline]] inline void exp_nonpositive(const F& arg, F& out) {
  const F lo = F{} - 87.0f;
  const F x = arg > lo ? arg : lo;
  const F fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
  const F r = (x - fn * 0.693359375f) + fn * 2.12194440e-4f;             // x - n ln2, ln2 in two parts
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I bits = (__builtin_convertvector(fn, I) + 127) << 23;  // 2^n, n in [-126, 0]
  F scale;
  std::memcpy(&scale, &bits, sizeof scale);
  out = p * scale;
}
float exp_nonpositive(float x) {
  F4 v{}, e;
  v[0] = x;
  exp_nonpositive<F4, I4>(v, e);
  return e[0];
}

// w[i] = exp((z[i] - shift) * scale) for i < n (every argument <= 0: shift the maximum, scale
// 1 / T); returns their sum: blocks of kWeightBlock (four float partial sums, lane j taking
// elements j, j + 4, ... in order whatever the vector width, so the bits are the same on every
// host; a tail of fewer than 4 added one by one), whose sums are also stored in block_sums[n /
// kWeightBlock rounded up] when given, added in double. F = F8 (AVX2) takes the exponentials
// eight at a time.
constexpr int64_t kWeightBlock = 1024;
template <typename F, typename I>
[[gnu::always_inline]] inline double exp_weights_lanes(const float* z, int64_t n, float shift, float scale, float* w,
                                                       double* block_sums) {
  constexpr int L = sizeof(F) / sizeof(float);
  double sum = 0;
  for (int64_t b = 0; b < n; b += kWeightBlock) {
    const int64_t end = std::min(n, b + kWeightBlock);
    F4 acc{};
    int64_t i = b;
    for (; i + L <= end; i += L) {
      F v, e;
      std::memcpy(&v, z + i, sizeof v);
      v = (v - shift) * scale;
      exp_nonpositive<F, I>(v, e);
      std::memcpy(w + i, &e, sizeof e);
      for (int h = 0; h < L / 4; ++h) {
        F4 part;
        std::memcpy(&part, reinterpret_cast<const char*>(&e) + 16 * h, sizeof part);
        acc += part;
      }
    }
    for (; i + 4 <= end; i += 4) {
      F4 v, e;
      std::memcpy(&v, z + i, sizeof v);
      v = (v - shift) * scale;
      exp_nonpositive<F4, I4>(v, e);
      std::memcpy(w + i, &e, sizeof e);
      acc += e;
    }
    double block = static_cast<double>((acc[0] + acc[1]) + (acc[2] + acc[3]));
    for (; i < end; ++i) block += w[i] = exp_nonpositive((z[i] - shift) * scale);
    if (block_sums != nullptr) block_sums[b / kWeightBlock] = block;
    sum += block;
  }
  return sum;
}
#if defined(__x86_64__) && defined(__GNUC__)
[[gnu::target("avx2")]] double exp_weights_avx2(const float* z, int64_t n, float shift, float scale, float* w,
                                                 double* block_sums) {
  return exp_weights_lanes<F8, I8>(z, n, shift, scale, w, block_sums);
}
#endif
// bench/sampler_bench's temperature 1 on the development VM (129280 weights): 962 us before the
// vector exponentials (std::exp in double), SSE2 ~172 us of them, AVX2 ~62.
double exp_weights(const float* z, int64_t n, float shift, float scale, float* w, double* block_sums = nullptr) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return exp_weights_avx2(z, n, shift, scale, w, block_sums);
#endif
  return exp_weights_lanes<F4, I4>(z, n, shift, scale, w, block_sums);
}

// Larger logit first, ties to the lower id: the order that top-k, top-p and min-p cut.
struct ByLogit {
  const float* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

// The bits of weight w[i] (positive floats order as their bits).
uint32_t weight_bits(const float* w, int64_t i) {
  uint32_t bits;
  std::memcpy(&bits, w + i, 4);
  return bits;
}

// A large top-p boundary (the ids of two 2^(1/8) bins: ~12K of 129280 near-flat logits, ~1.5 ms of
// indirect sorting) narrowed before it is sorted: its ids by 12 more bits of their weight (4096
// sub-bins per bin, each 2^8 ulps: a relative width of 2^-15), the sub-bin S at which the mass
// reaches the target, and a sub-bin of margin on each side (the float exponential is within ~1.4
// ulp, far less than a sub-bin, so ByLogit order never goes up more than one). The ids before S - 1
// are all in the top-p prefix: they join the kept ids (in id order) and their mass inner_mass; edge
// keeps the ids of sub-bins S - 1 .. S + 1 for the sort. Nothing moves when the sub-bins' sums (in
// another order than the walk's) reach the target before S - 1 could be placed.
constexpr size_t kRefineMin = 1024;
struct Moved {
  int64_t n = 0;     // ids appended at dst
  double mass = 0;   // inner_mass with their weights added
};
Moved refine_boundary(const float* w, double target, double inner_mass, std::vector<int32_t>& edge, int32_t* dst) {
  constexpr int kSub = 4096;
  uint32_t top = 0;  // the boundary's largest weight bin (bits >> 20): sub-bin keys count down from it
  for (int32_t i : edge) top = std::max(top, weight_bits(w, i) >> 20);
  auto key = [&](int32_t i) {  // 0: the largest weights
    return static_cast<int>(((top << 12) | 0xfffu) - (weight_bits(w, i) >> 8));
  };
  std::vector<double> mass(2 * kSub, 0.0);  // the boundary's two bins, top and top - 1
  for (int32_t i : edge) mass[static_cast<size_t>(std::min(key(i), 2 * kSub - 1))] += w[i];
  double acc = inner_mass;
  int S = -1;
  for (int k = 0; k < 2 * kSub; ++k) {
    acc += mass[static_cast<size_t>(k)];
    if (acc >= target) {
      S = k;
      break;
    }
  }
  Moved out{0, inner_mass};
  if (S < 2) return out;  // the target within the first sub-bins (or not reached): sort it all
  const int lo = S - 1, hi = S + 1;
  size_t left = 0;
  for (int32_t i : edge) {
    const int k = key(i);
    if (k < lo) {
      dst[out.n++] = i;
      out.mass += w[i];
    } else if (k <= hi) {
      edge[left++] = i;
    }
  }
  edge.resize(left);
  return out;
}

// top-p over every id (n large, nothing sorted yet) without sorting the kept set: the weights
// w[0, n) (w in (0, 1], the largest 1) go into 1017 bins by their leading bits (exponent and 3
// mantissa bits: bins of 2^(1/8), larger weights in lower bins, so ByLogit order never goes to a
// lower bin), in four interleaved histograms; B is the first bin at which the bins' mass reaches
// top_p of `sum`, and bins up to B + 1 (margin for the float bin sums) are the boundary. kept gets
// the ids of the bins before B in id order (all of them are in the top-p prefix), then the
// boundary ids sorted ByLogit; the prefix walk over the boundary finds the exact cut. Returns the
// kept count, or -1 (kept left as every id in id order) when the bins' sums (in another order than
// the walk's) misplaced B: the caller then sorts progressively. A boundary of more than
// kRefineMin ids is narrowed first (refine_boundary). bench/sampler_bench on the development VM, top_p
// 0.95 over 129280 logits: normal(0, 3) 1.4 -> 0.47 ms; normal(0, 0.5) 1.9 -> 0.85 ms with the
// narrowing.
int64_t top_p_binned(const float* z, const float* w, int64_t n, double sum, float top_p, std::vector<int32_t>& kept) {
  constexpr int kBins = 1024, kTop = 0x3f8;  // w = 1: bits >> 20 = 0x3f8
  auto bin_of = [&](int64_t i) { return kTop - static_cast<int>(weight_bits(w, i) >> 20); };
  std::vector<double> mass(4 * kBins, 0.0);
  for (int64_t i = 0; i < n; ++i) mass[(i & 3) * kBins + bin_of(i)] += w[i];
  const double target = static_cast<double>(top_p) * sum;
  double acc = 0;
  int B = kTop;
  for (int b = 0; b <= kTop; ++b) {
    acc += (mass[b] + mass[kBins + b]) + (mass[2 * kBins + b] + mass[3 * kBins + b]);
    if (acc >= target) {
      B = b;
      break;
    }
  }
  const int B2 = std::min(B + 1, kTop);
  int64_t inner = 0;
  double part[4] = {0, 0, 0, 0};  // the kept ids' mass in four chains (one serial chain cost ~0.15 ms)
  std::vector<int32_t> edge;
  for (int64_t i = 0; i < n; ++i) {
    const int b = bin_of(i);
    if (b < B) {
      kept[inner++] = static_cast<int32_t>(i);
      part[i & 3] += w[i];
    } else if (b <= B2) {
      edge.push_back(static_cast<int32_t>(i));
    }
  }
  double inner_mass = (part[0] + part[1]) + (part[2] + part[3]);
  if (inner_mass < target && edge.size() > kRefineMin) {
    const Moved m = refine_boundary(w, target, inner_mass, edge, kept.data() + inner);
    inner += m.n;
    inner_mass = m.mass;
  }
  std::sort(edge.begin(), edge.end(), ByLogit{z});
  int64_t keep = -1;
  if (inner_mass < target) {
    acc = inner_mass / sum;
    for (size_t j = 0; j < edge.size(); ++j) {
      kept[inner + j] = edge[j];
      acc += w[edge[j]] / sum;
      if (acc >= top_p) {
        keep = inner + static_cast<int64_t>(j) + 1;
        break;
      }
    }
  }
  if (keep < 0)
    for (int64_t i = 0; i < n; ++i) kept[i] = static_cast<int32_t>(i);
  return keep;
}
constexpr int64_t kBinnedTopPMin = 4096;  // fewer candidates: the progressive sort

// The weights of ids, summed in their order. A function of its own: inlined into Sampler::sample the
// accumulator lived on the stack (a store and a reload on every add: ~0.4 ms over 115K kept ids).
[[gnu::noinline]] double weight_sum(const float* w, const std::vector<int32_t>& ids) {
  double s = 0;
  for (int32_t i : ids) s += w[i];
  return s;
}

// The k (<= n) first ids of [0, n) in ByLogit order, sorted, into out: one pass in id order keeps
// the best k so far in a heap whose top is the last of them in ByLogit order; an id enters only
// when its logit beats that one's (an equal logit ranks after: its id is higher), so most of the
// pass is one comparison with a register (partial_sort's indirect comparisons cost ~4x).
void top_ids(const float* z, int64_t n, int64_t k, std::vector<int32_t>& out) {
  const ByLogit by{z};
  out.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int32_t>(i);
  std::make_heap(out.begin(), out.end(), by);
  float last = z[out.front()];
  auto offer = [&](int64_t i) {
    if (!(z[i] > last)) return;
    std::pop_heap(out.begin(), out.end(), by);
    out.back() = static_cast<int32_t>(i);
    std::push_heap(out.begin(), out.end(), by);
    last = z[out.front()];
  };
  constexpr int64_t kSpan = 16;  // spans whose maximum does not beat the heap's last are skipped whole
  int64_t i = k;
  for (; i + kSpan <= n; i += kSpan) {
    float m = z[i];
    for (int64_t j = 1; j < kSpan; ++j) m = z[i + j] > m ? z[i + j] : m;
    if (!(m > last)) continue;
    for (int64_t j = 0; j < kSpan; ++j) offer(i + j);
  }
  for (; i < n; ++i) offer(i);
  std::sort_heap(out.begin(), out.end(), by);
}

}  // namespace

int32_t argmax(const float* logits, int64_t vocab) {
  if (vocab <= 0) return 0;
  const float m = max_value(logits, vocab);
  if (const float* at = std::find(logits, logits + vocab, m); at != logits + vocab) return static_cast<int32_t>(at - logits);
  int64_t best = 0;  // NaN entries (never equal): the first value no other exceeds
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

NonFiniteLogits non_finite_logits(int64_t id, float value) {
  return NonFiniteLogits(str_cat("non-finite logit (", value, ") at token id ", id, "; refusing to sample"));
}

int64_t first_non_finite(const float* logits, int64_t vocab) {
  // A branch-free test per block of 256 (the exponent bits all ones: Inf or NaN; integer ops on
  // the bits, so the fixed-length loop vectorizes), the offending block scanned.
  constexpr int64_t kBlock = 256;
  for (int64_t b = 0; b < vocab; b += kBlock) {
    const int64_t e = std::min(vocab, b + kBlock);
    uint32_t bad = 0;
    if (e - b == kBlock) {
      uint32_t bits[kBlock];
      std::memcpy(bits, logits + b, sizeof bits);
      for (int64_t i = 0; i < kBlock; ++i) bad |= static_cast<uint32_t>((bits[i] & 0x7f800000u) == 0x7f800000u);
    } else {
      for (int64_t i = b; i < e; ++i) bad |= static_cast<uint32_t>(!std::isfinite(logits[i]));
    }
    if (bad == 0) continue;
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
  w_.resize(static_cast<size_t>(vocab));
  if (greedy_) {
    out.id = static_cast<int32_t>(std::find(z, z + vocab, static_cast<float>(max_z_)) - z);  // the first maximum
    log_sum_ = std::log(exp_weights(z, vocab, static_cast<float>(max_z_), 1.0f, w_.data()));
  } else {
    // Weights w = exp((z - max) / T) of the candidates: the top-k by ByLogit (sorted), or every id
    // (in id order). top-p keeps the shortest ByLogit prefix whose share of the candidates' weight
    // reaches top_p (over every id: top_p_binned, which sorts only the ids near the cut; else
    // sorted as far as needed, in growing steps), min-p the ids whose weight is at least min_p
    // times the largest (1); the draw walks what is kept in that order.
    const float inv_t = static_cast<float>(1.0 / params_.temperature);
    const ByLogit by{z};
    int64_t n = vocab, sorted = 0;  // candidates kept_[0, n); kept_[0, sorted) in ByLogit order
    if (params_.top_k > 0 && params_.top_k < vocab) {
      n = sorted = params_.top_k;
      top_ids(z, vocab, n, kept_);
    } else {
      kept_.resize(static_cast<size_t>(vocab));
      for (int64_t i = 0; i < vocab; ++i) kept_[i] = static_cast<int32_t>(i);
    }
    const float mz = static_cast<float>(max_z_);
    double sum = 0;
    if (n == vocab) {  // every id, in id order
      block_sums_.resize(static_cast<size_t>((vocab + kWeightBlock - 1) / kWeightBlock));
      sum = exp_weights(z, vocab, mz, inv_t, w_.data(), block_sums_.data());
    } else {
      for (int64_t j = 0; j < n; ++j) sum += w_[kept_[j]] = exp_nonpositive((z[kept_[j]] - mz) * inv_t);
    }
    int64_t keep = n;
    bool id_order = false;  // kept_[0, keep): the top-p set, ids in id order before its sorted boundary
    if (params_.top_p < 1.0f && sorted == 0 && n >= kBinnedTopPMin) {
      const int64_t k = top_p_binned(z, w_.data(), n, sum, params_.top_p, kept_);
      if (k >= 0) {
        keep = k;
        id_order = true;
      }
    }
    if (params_.top_p < 1.0f && !id_order) {
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
      if (!id_order && (keep < n || sorted == n)) {  // a ByLogit prefix: its weights do not increase
        int64_t k = 1;
        while (k < keep && w_[kept_[k]] >= floor) ++k;
        keep = k;
      } else {  // the kept ids not in ByLogit order: the ones at or above the floor
        keep = std::stable_partition(kept_.begin(), kept_.begin() + keep, [&](int32_t i) { return w_[i] >= floor; }) -
               kept_.begin();
      }
    }
    kept_.resize(static_cast<size_t>(keep));
    kept_sum_ = sum;  // nothing cut by top-p or min-p: the candidates' sum
    if (keep < n) kept_sum_ = weight_sum(w_.data(), kept_);
    log_sum_ = std::log(kept_sum_);
    std::uniform_real_distribution<double> uniform(0.0, kept_sum_);
    double r = uniform(rng_);
    out.id = kept_.back();
    if (keep == vocab && sorted == 0 && !id_order) {  // every id in id order: skip whole blocks first
      for (size_t b = 0; b < block_sums_.size(); ++b) {
        if (r >= block_sums_[b]) {
          r -= block_sums_[b];
          continue;
        }
        const int64_t end = std::min<int64_t>(vocab, static_cast<int64_t>(b + 1) * kWeightBlock);
        out.id = static_cast<int32_t>(end - 1);  // the block's sum rounded differently: its last id
        for (int64_t i = static_cast<int64_t>(b) * kWeightBlock; i < end; ++i) {
          r -= w_[i];
          if (r < 0) {
            out.id = static_cast<int32_t>(i);
            break;
          }
        }
        break;
      }
    } else {
      for (int32_t i : kept_) {
        r -= w_[i];
        if (r < 0) {
          out.id = i;
          break;
        }
      }
    }
  }
  out.logprob = logprob(out.id);
  if (n_top > 0) take_top(n_top, out);
  ++counts_[out.id];
  return out;
}

float Sampler::logprob(int32_t id) const {
  const double t = greedy_ ? 1.0 : params_.temperature;  // greedy: the softmax at temperature 1
  return static_cast<float>((z_[id] - max_z_) / t - log_sum_);
}

// The n_top most likely entries of the last distribution, descending (ties to the lower id).
void Sampler::take_top(int64_t n_top, SampledToken& out) {
  std::vector<int32_t> ids;
  if (greedy_ || kept_.size() == z_.size()) {  // every id: one pass
    const auto V = static_cast<int64_t>(z_.size());
    top_ids(z_.data(), V, std::min(n_top, V), ids);
  } else {
    ids = kept_;
    const auto m = static_cast<std::ptrdiff_t>(std::min<size_t>(static_cast<size_t>(n_top), ids.size()));
    std::partial_sort(ids.begin(), ids.begin() + m, ids.end(), ByLogit{z_.data()});
    ids.resize(static_cast<size_t>(m));
  }
  for (int32_t id : ids) out.top.push_back({id, logprob(id)});
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
