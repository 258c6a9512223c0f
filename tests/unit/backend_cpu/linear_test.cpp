// linear / grouped_linear in every weight format against x @ W^T in double, with W decoded by
// independent test code from the raw bytes; and bit-identical results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

using model::deepseek_v4::LinearWeight;
using model::deepseek_v4::WeightFormat;

constexpr float kE2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

// A LinearWeight with its storage, and W as floats decoded here (not by the backend).
struct TestWeight {
  HostTensor weight, scale, global;
  LinearWeight lw;
  std::vector<float> w;  // [out, in]
};

TestWeight make_weight(WeightFormat f, int64_t O, int64_t I, uint32_t seed, bool f32_scale = false,
                       DType dense_dtype = DType::kF32) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  TestWeight t;
  t.lw.name = "test.linear";
  t.lw.out_features = O;
  t.lw.in_features = I;
  t.lw.format = f;
  t.w.resize(static_cast<size_t>(O * I));
  switch (f) {
    case WeightFormat::kDense: {
      t.weight = HostTensor(dense_dtype, {O, I});
      const std::vector<float> v = random_normal(static_cast<size_t>(O * I), seed);
      for (int64_t i = 0; i < O * I; ++i) {
        if (dense_dtype == DType::kF32) t.weight.as<float>()[i] = v[i];
        if (dense_dtype == DType::kBF16) t.weight.as<uint16_t>()[i] = f32_to_bf16(v[i]);
        if (dense_dtype == DType::kF16) t.weight.as<uint16_t>()[i] = f32_to_f16(v[i]);
        t.w[i] = load_as_f32(t.weight.bytes.data(), dense_dtype, static_cast<size_t>(i));
      }
      break;
    }
    case WeightFormat::kFp8Block: {
      const int64_t SO = (O + 127) / 128, SI = (I + 127) / 128;
      t.weight = HostTensor(DType::kF8E4M3, {O, I});
      t.scale = HostTensor(f32_scale ? DType::kF32 : DType::kF8E8M0, {SO, SI});
      for (auto& b : t.weight.bytes) {
        do b = static_cast<uint8_t>(byte(rng));
        while ((b & 0x7f) == 0x7f);  // no NaN codes
      }
      std::vector<float> sv(static_cast<size_t>(SO * SI));
      for (int64_t i = 0; i < SO * SI; ++i) {
        if (f32_scale) {
          sv[i] = t.scale.as<float>()[i] = 0.01f * static_cast<float>(1 + byte(rng));
        } else {
          t.scale.as<uint8_t>()[i] = static_cast<uint8_t>(118 + byte(rng) % 16);
          sv[i] = std::ldexp(1.0f, t.scale.as<uint8_t>()[i] - 127);
        }
      }
      for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i)
          t.w[o * I + i] = e4m3_to_f32(t.weight.bytes[o * I + i]) * sv[(o / 128) * SI + i / 128];
      break;
    }
    case WeightFormat::kMxfp4:
    case WeightFormat::kNvfp4: {
      const bool mx = f == WeightFormat::kMxfp4;
      const int64_t G = mx ? 32 : 16;
      t.weight = HostTensor(DType::kU8, {O, I / 2});
      t.scale = HostTensor(mx ? DType::kF8E8M0 : DType::kF8E4M3, {O, I / G});
      for (auto& b : t.weight.bytes) b = static_cast<uint8_t>(byte(rng));
      for (auto& b : t.scale.bytes) {
        if (mx) {
          b = static_cast<uint8_t>(120 + byte(rng) % 12);
        } else {
          do b = static_cast<uint8_t>(byte(rng) & 0x7f);  // positive E4M3 scales, no NaN
          while (b == 0x7f);
        }
      }
      float global = 1.0f;
      if (!mx) {
        t.global = HostTensor(DType::kF32, {});
        global = t.global.as<float>()[0] = 0.0371f;
        t.lw.weight_scale_2 = t.global.view();
      }
      for (int64_t o = 0; o < O; ++o) {
        for (int64_t i = 0; i < I; ++i) {
          const uint8_t b = t.weight.bytes[o * (I / 2) + i / 2];
          const float e = kE2m1[i % 2 ? b >> 4 : b & 0xf];
          const uint8_t sb = t.scale.bytes[o * (I / G) + i / G];
          t.w[o * I + i] = mx ? e * e8m0_to_f32(sb) : e * e4m3_to_f32(sb) * global;
        }
      }
      break;
    }
  }
  t.lw.weight = t.weight.view();
  if (!t.scale.bytes.empty()) t.lw.scale = t.scale.view();
  return t;
}

std::vector<float> ref_linear(const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t O,
                              int64_t I) {
  std::vector<float> y(static_cast<size_t>(T * O));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < O; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < I; ++i) acc += static_cast<double>(x[t * I + i]) * w[o * I + i];
      y[t * O + o] = static_cast<float>(acc);
    }
  return y;
}

class CpuLinear : public ::testing::TestWithParam<int> {
 protected:
  std::unique_ptr<ops::Backend> be = ops::make_cpu_backend(GetParam());
};

void check_format(ops::Backend& be, WeightFormat f, bool f32_scale, DType dense_dtype, uint32_t seed) {
  const int64_t T = 5, O = 200, I = 288;
  TestWeight tw = make_weight(f, O, I, seed, f32_scale, dense_dtype);
  std::vector<float> x = random_normal(static_cast<size_t>(T * I), seed + 1), y(static_cast<size_t>(T * O));
  poison(y);
  be.linear(f32_view(x, {T, I}), tw.lw, f32_view(y, {T, O}));
  EXPECT_LE(max_rel_diff(y, ref_linear(x, tw.w, T, O, I)), kTightRel);
}

TEST_P(CpuLinear, DenseF32) { check_format(*be, WeightFormat::kDense, false, DType::kF32, 11); }
TEST_P(CpuLinear, DenseBf16) { check_format(*be, WeightFormat::kDense, false, DType::kBF16, 12); }
TEST_P(CpuLinear, DenseF16) { check_format(*be, WeightFormat::kDense, false, DType::kF16, 13); }
TEST_P(CpuLinear, Fp8BlockE8m0) { check_format(*be, WeightFormat::kFp8Block, false, DType::kF32, 14); }
TEST_P(CpuLinear, Fp8BlockF32Scale) { check_format(*be, WeightFormat::kFp8Block, true, DType::kF32, 15); }
TEST_P(CpuLinear, Mxfp4) { check_format(*be, WeightFormat::kMxfp4, false, DType::kF32, 16); }
TEST_P(CpuLinear, Nvfp4) { check_format(*be, WeightFormat::kNvfp4, false, DType::kF32, 17); }

TEST_P(CpuLinear, ThreeDimensionalInput) {
  const int64_t O = 7, I = 9;
  std::vector<float> w = random_normal(O * I, 21), x = random_normal(2 * 3 * I, 22), y(2 * 3 * O);
  poison(y);
  be->linear(f32_view(x, {2, 3, I}), dense_weight(w, O, I), f32_view(y, {2, 3, O}));
  EXPECT_LE(max_rel_diff(y, ref_linear(x, w, 6, O, I)), kTightRel);
}

TEST_P(CpuLinear, ShapeMismatchNamesWeight) {
  std::vector<float> w = random_normal(12, 1), x = random_normal(5, 2), y(3);
  try {
    be->linear(f32_view(x, {1, 5}), dense_weight(w, 3, 4, "layers.1.attn.wq_a"), f32_view(y, {1, 3}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.1.attn.wq_a"), std::string::npos) << e.what();
  }
}

TEST_P(CpuLinear, GroupedMatchesBlockDiagonal) {
  const int64_t T = 4, G = 3, Lo = 40, In = 64;
  TestWeight tw = make_weight(WeightFormat::kFp8Block, G * Lo, In, 31);
  std::vector<float> x = random_normal(T * G * In, 32), y(T * G * Lo);
  poison(y);
  be->grouped_linear(f32_view(x, {T, G, In}), tw.lw, G, f32_view(y, {T, G, Lo}));
  std::vector<float> ref(y.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t l = 0; l < Lo; ++l) {
        double acc = 0;
        for (int64_t i = 0; i < In; ++i) acc += double(tw.w[(g * Lo + l) * In + i]) * x[(t * G + g) * In + i];
        ref[(t * G + g) * Lo + l] = static_cast<float>(acc);
      }
  EXPECT_LE(max_rel_diff(y, ref), kTightRel);
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuLinear, ::testing::Values(1, 2));

TEST(CpuLinearThreads, OneAndTwoThreadsGiveIdenticalBits) {
  auto be1 = ops::make_cpu_backend(1), be2 = ops::make_cpu_backend(2);
  for (WeightFormat f : {WeightFormat::kDense, WeightFormat::kFp8Block, WeightFormat::kMxfp4, WeightFormat::kNvfp4}) {
    const int64_t T = 3, O = 130, I = 256;
    TestWeight tw = make_weight(f, O, I, 41);
    std::vector<float> x = random_normal(T * I, 42), y1(T * O), y2(T * O);
    poison(y1);
    poison(y2);
    be1->linear(f32_view(x, {T, I}), tw.lw, f32_view(y1, {T, O}));
    be2->linear(f32_view(x, {T, I}), tw.lw, f32_view(y2, {T, O}));
    EXPECT_TRUE(same_bits(y1, y2)) << static_cast<int>(f);
    EXPECT_LE(max_rel_diff(y1, ref_linear(x, tw.w, T, O, I)), kTightRel);
  }
}

}  // namespace
}  // namespace clawmine::test
