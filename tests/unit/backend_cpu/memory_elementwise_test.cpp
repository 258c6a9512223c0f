// The CPU backend's memory ops (allocate/release, the scratch stack, upload/download, copy with
// F32/BF16/F16 conversion, fill) and the small elementwise ops of interface v2: iota,
// hc_expand and the official round trips (qdq) against quant/qdq.h.
#include <gtest/gtest.h>

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/backend.h"
#include "quant/qdq.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

TEST(CpuMemory, AllocateReleaseAndScratchStack) {
  auto be = ops::make_cpu_backend(1);
  EXPECT_EQ(be->device(), Device::kCpu);
  EXPECT_EQ(be->act_dtype(), DType::kF32);
  {
    ops::DeviceBuffer b(*be, DType::kBF16, {3, 5});
    EXPECT_EQ(b.view().shape, (Shape{3, 5}));
    EXPECT_EQ(b.view().dtype, DType::kBF16);
    EXPECT_NE(b.view().data, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.view().data) % 64, 0u);
  }
  const TensorView v = be->allocate(DType::kF32, {4});
  be->release(v);
  EXPECT_THROW(be->release(v), Error);  // twice
  const size_t m0 = be->scratch_mark();
  const TensorView a = be->scratch(DType::kF32, {8});
  {
    ops::ScratchFrame frame(*be);
    be->scratch(DType::kI32, {2, 2});
    be->scratch(DType::kF32, {0, 4});  // zero elements still get an address
    EXPECT_EQ(be->scratch_mark(), m0 + 3);
  }
  EXPECT_EQ(be->scratch_mark(), m0 + 1);
  EXPECT_NE(a.data, nullptr);
  be->scratch_reset(m0);
  EXPECT_EQ(be->scratch_mark(), m0);
  EXPECT_THROW(be->scratch_reset(m0 + 5), Error);
}

TEST(CpuMemory, UploadDownloadRoundTrip) {
  auto be = ops::make_cpu_backend(1);
  const std::vector<float> src = random_normal(12, 301);
  ops::DeviceBuffer b(*be, DType::kF32, {3, 4});
  be->upload(src.data(), b.view());
  std::vector<float> back(12);
  poison(back);
  be->download(b.view(), back.data());
  EXPECT_TRUE(same_bits(back, src));
}

TEST(CpuMemory, CopyConvertsBetweenFloatTypes) {
  auto be = ops::make_cpu_backend(1);
  std::vector<float> x = random_normal(40, 302, 3.0f), back(40);
  HostTensor bf(DType::kBF16, {40}), h(DType::kF16, {40}), bf2(DType::kBF16, {5, 8});
  be->copy(f32_view(x, {40}), bf.view());
  be->copy(f32_view(x, {40}), h.view());
  be->copy(h.view(), bf2.view());  // F16 -> BF16 through float32, same element count, other shape
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(bf.as<uint16_t>()[i], f32_to_bf16(x[i])) << i;
    EXPECT_EQ(h.as<uint16_t>()[i], f32_to_f16(x[i])) << i;
    EXPECT_EQ(bf2.as<uint16_t>()[i], f32_to_bf16(f16_to_f32(h.as<uint16_t>()[i]))) << i;
  }
  poison(back);
  be->copy(bf.view(), f32_view(back, {40}));
  for (int i = 0; i < 40; ++i) EXPECT_EQ(back[i], bf16_to_f32(bf.as<uint16_t>()[i])) << i;
  std::vector<float> same(40);
  poison(same);
  be->copy(f32_view(x, {40}), f32_view(same, {4, 10}));
  EXPECT_TRUE(same_bits(same, x));
  std::vector<int32_t> a = {1, 2, 3}, b(3, 0);
  be->copy(i32_view(a, {3}), i32_view(b, {3}));
  EXPECT_EQ(a, b);
  EXPECT_THROW(be->copy(i32_view(a, {3}), f32_view(same, {3})), Error);    // no integer conversion
  EXPECT_THROW(be->copy(f32_view(x, {40}), f32_view(same, {39})), Error);  // element counts differ
}

TEST(CpuMemory, FillFloatTypes) {
  auto be = ops::make_cpu_backend(1);
  std::vector<float> f(7);
  poison(f);
  be->fill(f32_view(f, {7}), -2.5f);
  for (float v : f) EXPECT_EQ(v, -2.5f);
  HostTensor bf(DType::kBF16, {3}), h(DType::kF16, {3});
  be->fill(bf.view(), 0.1f);
  be->fill(h.view(), 0.1f);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(bf.as<uint16_t>()[i], f32_to_bf16(0.1f));
    EXPECT_EQ(h.as<uint16_t>()[i], f32_to_f16(0.1f));
  }
  std::vector<int32_t> n(2);
  EXPECT_THROW(be->fill(i32_view(n, {2}), 1.0f), Error);
}

TEST(CpuElementwise, Iota) {
  auto be = ops::make_cpu_backend(1);
  std::vector<int32_t> out(5, 77);
  be->iota(i32_view(out, {5}), 12, 4);
  EXPECT_EQ(out, (std::vector<int32_t>{12, 16, 20, 24, 28}));
  be->iota(i32_view(out, {5}), 7, 1);
  EXPECT_EQ(out, (std::vector<int32_t>{7, 8, 9, 10, 11}));
  EXPECT_THROW(be->iota(i32_view(out, {5}), int64_t{1} << 31, 1), Error);
}

TEST(CpuElementwise, HcExpandCopiesEveryStream) {
  auto be = ops::make_cpu_backend(2);
  const int64_t T = 3, hc = 4, D = 5;
  std::vector<float> e = random_normal(T * D, 303), X(T * hc * D);
  poison(X);
  be->hc_expand(f32_view(e, {T, D}), f32_view(X, {T, hc, D}));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < hc; ++j)
      for (int64_t d = 0; d < D; ++d) EXPECT_EQ(X[(t * hc + j) * D + d], e[t * D + d]);
}

class CpuQdq : public ::testing::TestWithParam<int> {};

TEST_P(CpuQdq, MatchesQuantQdq) {
  auto be = ops::make_cpu_backend(GetParam());
  // FP8 on the nope dims: 3 rows of 80 with 72 nope dims (a partial last block of 8).
  const int64_t rows = 3, width = 80, n_nope = 72;
  std::vector<float> x = random_normal(rows * width, 304, 4.0f), ref = x;
  be->qdq(f32_view(x, {rows, 1, width}), ops::Qdq::kFp8Nope, n_nope);
  for (int64_t r = 0; r < rows; ++r) quant::fp8_qdq_blocks(ref.data() + r * width, n_nope, 64);
  EXPECT_TRUE(same_bits(x, ref));
  EXPECT_FALSE(same_bits(x, random_normal(rows * width, 304, 4.0f)));  // it did round
  for (int64_t r = 0; r < rows; ++r)  // rope dims untouched
    for (int64_t d = n_nope; d < width; ++d) EXPECT_EQ(x[r * width + d], random_normal(rows * width, 304, 4.0f)[r * width + d]);

  // Hadamard + FP4 on whole rows of 64.
  std::vector<float> y = random_normal(5 * 64, 305), yref = y;
  be->qdq(f32_view(y, {5, 64}), ops::Qdq::kHadamardFp4, 0);
  for (int64_t r = 0; r < 5; ++r) {
    quant::hadamard_inplace(yref.data() + r * 64, 64);
    quant::fp4_qdq_blocks(yref.data() + r * 64, 64, 32);
  }
  EXPECT_TRUE(same_bits(y, yref));

  std::vector<float> z = random_normal(10, 306), z0 = z;
  be->qdq(f32_view(z, {2, 5}), ops::Qdq::kNone, 0);
  EXPECT_TRUE(same_bits(z, z0));
  EXPECT_THROW(be->qdq(f32_view(z, {2, 5}), ops::Qdq::kHadamardFp4, 0), Error);  // 5 is not a power of two
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuQdq, ::testing::Values(1, 2));

}  // namespace
}  // namespace clawmine::test
