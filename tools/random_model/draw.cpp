// Fills by table lookup: a 16-bit uniform indexes the quantile table of N(0, 1) (or its E4M3 /
// packed-E2M1 rounding), so one 64-bit draw of xoshiro256** gives four BF16 values or four
// weight bytes. Tables are built once (thread-safe static) with quant/codec's saturating encoders.
#include "random_model/draw.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.h"
#include "quant/codec.h"

namespace clawmine::tools {

namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& w : s_) w = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// Inverse of the standard normal CDF for p in (0, 1) (Acklam's rational approximation,
// relative error below 1.2e-9: far finer than any stored dtype here).
double inverse_normal(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01,  -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  constexpr double kLow = 0.02425;
  auto tail = [&](double q) {
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
  };
  if (p < kLow) return tail(std::sqrt(-2.0 * std::log(p)));
  if (p > 1.0 - kLow) return -tail(std::sqrt(-2.0 * std::log(1.0 - p)));
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
}

constexpr uint8_t kE4m3ScaleLo = 0x68;  // 2^7 * 1.0 = 128
constexpr uint8_t kE4m3ScaleHi = 0x7e;  // 2^8 * 1.75 = 448 (0x7f is NaN)

struct Tables {
  float normal16[65536];      // quantile (u + 0.5) / 65536 of N(0, 1)
  uint8_t e4m3_code16[65536];  // E4M3 of kE4m3CodeStd * normal16[u]
  uint8_t e2m1_pair16[65536];  // low nibble from u & 0xff, high nibble from u >> 8
  double e4m3_rms = 0, e2m1_rms = 0, scale_rms = 0;
};

const Tables& tables() {
  static const std::unique_ptr<const Tables> t = [] {
    auto tb = std::make_unique<Tables>();
    double e4m3_sq = 0;
    for (int u = 0; u < 65536; ++u) {
      tb->normal16[u] = static_cast<float>(inverse_normal((u + 0.5) / 65536.0));
      tb->e4m3_code16[u] = quant::encode_e4m3(static_cast<float>(kE4m3CodeStd) * tb->normal16[u]);
      const double v = e4m3_to_f32(tb->e4m3_code16[u]);
      e4m3_sq += v * v;
    }
    uint8_t nibble[256];
    double e2m1_sq = 0;
    for (int u = 0; u < 256; ++u) {
      nibble[u] = quant::encode_e2m1(static_cast<float>(kE2m1CodeStd * inverse_normal((u + 0.5) / 256.0)));
      const double v = quant::decode_e2m1(nibble[u]);
      e2m1_sq += v * v;
    }
    for (int u = 0; u < 65536; ++u) tb->e2m1_pair16[u] = static_cast<uint8_t>(nibble[u & 0xff] | (nibble[u >> 8] << 4));
    double scale_sq = 0;
    for (int c = kE4m3ScaleLo; c <= kE4m3ScaleHi; ++c) scale_sq += double(e4m3_to_f32(uint8_t(c))) * e4m3_to_f32(uint8_t(c));
    tb->e4m3_rms = std::sqrt(e4m3_sq / 65536.0);
    tb->e2m1_rms = std::sqrt(e2m1_sq / 256.0);
    tb->scale_rms = std::sqrt(scale_sq / (kE4m3ScaleHi - kE4m3ScaleLo + 1));
    return std::unique_ptr<const Tables>(std::move(tb));
  }();
  return *t;
}

// out[begin, end) from a 16-bit table of T, four lookups per 64-bit draw.
template <typename T>
void fill_from_table16(const T* table, T* out, int64_t begin, int64_t end, Rng& rng) {
  int64_t i = begin;
  for (; i + 4 <= end; i += 4) {
    const uint64_t r = rng.next();
    out[i] = table[r & 0xffff];
    out[i + 1] = table[(r >> 16) & 0xffff];
    out[i + 2] = table[(r >> 32) & 0xffff];
    out[i + 3] = table[r >> 48];
  }
  for (uint64_t r = rng.next(); i < end; ++i, r >>= 16) out[i] = table[r & 0xffff];
}

// BF16 mean + stddev * N(0, 1): the quantile table mapped once per call (a chunk is 4M values,
// the table 64K), then looked up.
void fill_bf16_normal(const FillSpec& s, uint16_t* out, int64_t begin, int64_t end, Rng& rng) {
  const float* q = tables().normal16;
  const float mean = static_cast<float>(s.mean), sd = static_cast<float>(s.stddev);
  if (end - begin < 65536) {
    int64_t i = begin;
    while (i < end) {
      uint64_t r = rng.next();
      for (int k = 0; k < 4 && i < end; ++k, ++i, r >>= 16) out[i] = f32_to_bf16(mean + sd * q[r & 0xffff]);
    }
    return;
  }
  std::vector<uint16_t> table(65536);
  for (int u = 0; u < 65536; ++u) table[u] = f32_to_bf16(mean + sd * q[u]);
  fill_from_table16(table.data(), out, begin, end, rng);
}

void fill_tid2eid(const FillSpec& s, int64_t row_len, int64_t* out, int64_t begin, int64_t end, Rng& rng) {
  CLAWMINE_CHECK(s.experts >= row_len && row_len > 0, "tid2eid: ", row_len, " distinct ids from ", s.experts,
                 " experts");
  for (int64_t row = begin; row < end; ++row) {
    int64_t* ids = out + row * row_len;
    for (int64_t k = 0; k < row_len; ++k) {
      int64_t e;
      do {
        e = static_cast<int64_t>(rng.below(static_cast<uint64_t>(s.experts)));
      } while (std::find(ids, ids + k, e) != ids + k);
      ids[k] = e;
    }
  }
}

}  // namespace

double e4m3_code_rms() { return tables().e4m3_rms; }
double e2m1_code_rms() { return tables().e2m1_rms; }
double e4m3_scale_rms() { return tables().scale_rms; }

uint64_t chunk_seed(uint64_t model_seed, const char* name, uint64_t chunk) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name
  for (const char* p = name; *p; ++p) h = (h ^ static_cast<uint8_t>(*p)) * 0x100000001b3ull;
  uint64_t s = model_seed ^ 0x5851f42d4c957f2dull;
  uint64_t a = splitmix64(s) ^ h;
  return splitmix64(a) ^ (chunk * 0xd1342543de82ef95ull);
}

void fill_units(const FillSpec& spec, DType dtype, int64_t row_len, uint8_t* data, int64_t begin, int64_t end,
                uint64_t seed) {
  Rng rng(seed);
  switch (spec.kind) {
    case Fill::kNormal:
      if (dtype == DType::kBF16) {
        fill_bf16_normal(spec, reinterpret_cast<uint16_t*>(data), begin, end, rng);
      } else {
        CLAWMINE_CHECK(dtype == DType::kF32, "normal fill of ", dtype_name(dtype));
        float* out = reinterpret_cast<float*>(data);
        for (int64_t i = begin; i < end; ++i) {
          out[i] = static_cast<float>(spec.mean + spec.stddev * inverse_normal(rng.uniform() + 0x1.0p-54));
        }
      }
      return;
    case Fill::kUniform: {
      CLAWMINE_CHECK(dtype == DType::kF32, "uniform fill of ", dtype_name(dtype));
      float* out = reinterpret_cast<float*>(data);
      for (int64_t i = begin; i < end; ++i) out[i] = static_cast<float>(spec.lo + (spec.hi - spec.lo) * rng.uniform());
      return;
    }
    case Fill::kConst: {
      CLAWMINE_CHECK(dtype == DType::kF32, "const fill of ", dtype_name(dtype));
      float* out = reinterpret_cast<float*>(data);
      std::fill(out + begin, out + end, static_cast<float>(spec.mean));
      return;
    }
    case Fill::kE4m3Code:
      CLAWMINE_CHECK(dtype == DType::kF8E4M3, "E4M3 codes as ", dtype_name(dtype));
      fill_from_table16(tables().e4m3_code16, data, begin, end, rng);
      return;
    case Fill::kE2m1Pair:
      CLAWMINE_CHECK(dtype == DType::kU8 || dtype == DType::kI8, "E2M1 pairs as ", dtype_name(dtype));
      fill_from_table16(tables().e2m1_pair16, data, begin, end, rng);
      return;
    case Fill::kE8m0Scale: {
      CLAWMINE_CHECK(dtype == DType::kF8E8M0, "E8M0 scales as ", dtype_name(dtype));
      // (1 - p) 4^lo + p 4^(lo+1) = 4^x  =>  p = (4^(x - lo) - 1) / 3
      const double lo = std::floor(spec.log2_rms);
      const double p_hi = (std::pow(4.0, spec.log2_rms - lo) - 1.0) / 3.0;
      auto code = [](double e) { return static_cast<uint8_t>(std::clamp(127.0 + e, 0.0, 254.0)); };
      const uint8_t c_lo = code(lo), c_hi = code(lo + 1);
      for (int64_t i = begin; i < end; ++i) data[i] = rng.uniform() < p_hi ? c_hi : c_lo;
      return;
    }
    case Fill::kE4m3Scale:
      CLAWMINE_CHECK(dtype == DType::kF8E4M3, "E4M3 scales as ", dtype_name(dtype));
      for (int64_t i = begin; i < end; ++i) {
        data[i] = static_cast<uint8_t>(kE4m3ScaleLo + rng.below(kE4m3ScaleHi - kE4m3ScaleLo + 1));
      }
      return;
    case Fill::kTid2eid:
      CLAWMINE_CHECK(dtype == DType::kI64, "tid2eid as ", dtype_name(dtype));
      fill_tid2eid(spec, row_len, reinterpret_cast<int64_t*>(data), begin, end, rng);
      return;
  }
}

}  // namespace clawmine::tools
