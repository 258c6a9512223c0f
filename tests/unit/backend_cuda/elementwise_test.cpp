// The CUDA elementwise ops (elementwise.cu, norm_rope.cu, qdq.cu) against the CPU reference on
// the same fresh random inputs, outputs poisoned first: embed, hc_expand, iota, add and qdq are
// bit-exact (F32, and BF16 where the result is representable), rms_norm within the float32 /
// BF16 budgets, rope within 1e-6 (double sin/cos on both sides) at positions up to ~200k.
// Shapes: small odd ones and V4-Flash's (hidden 4096, 64 heads x 512 with rope 64, KV nope 448,
// indexer 64 x 128), T in {1, 7, 300}. Skips without a GPU.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "backend/cuda/op_errors.h"
#include "core/error.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

using backend::cuda::check_op_errors;

class CudaElementwise : public GpuTest {};

// n values in [0, V), the first 0 and the last V - 1 (when n > 1).
std::vector<int32_t> random_ids(int64_t n, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, V - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(dist(rng));
  ids.front() = 0;
  if (n > 1) ids.back() = static_cast<int32_t>(V - 1);
  return ids;
}

// Normal values with a different power-of-ten scale per row (every quantization scale exponent
// gets exercised), rows of `width`.
std::vector<float> scaled_rows(int64_t rows, int64_t width, uint32_t seed) {
  std::vector<float> v = random_normal(static_cast<size_t>(rows * width), seed);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = std::pow(10.0f, static_cast<float>(r % 11) - 5.0f);
    for (int64_t i = 0; i < width; ++i) v[r * width + i] *= s;
  }
  return v;
}

TEST_F(CudaElementwise, EmbedCopiesRowsExactly) {
  struct Case {
    int64_t V, D, T;
  };
  uint32_t seed = 100;
  for (const Case c : {Case{37, 19, 1}, Case{37, 19, 7}, Case{512, 4096, 300}, Case{129280, 64, 7}}) {
    for (const DType table_t : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (const DType out_t : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(
            str_cat("V ", c.V, " D ", c.D, " T ", c.T, " table ", dtype_label(table_t), " out ", dtype_label(out_t)));
        const OnBoth table = same_floats(*cpu, *cuda, random_normal(c.V * c.D, ++seed), {c.V, c.D}, table_t);
        const OnBoth ids = same_ints(*cpu, *cuda, random_ids(c.T, c.V, ++seed), {c.T});
        const OnBoth out = poisoned_both(*cpu, *cuda, {c.T, c.D}, out_t);
        cpu->embed(table.cpu.view(), ids.cpu.view(), out.cpu.view());
        cuda->embed(table.gpu.view(), ids.gpu.view(), out.gpu.view());
        EXPECT_TRUE(
            same_bits(download_f32(*cuda, out.gpu.view()), rounded_to(download_f32(*cpu, out.cpu.view()), out_t)));
      }
    }
  }
}

TEST_F(CudaElementwise, EmbedOutOfRangeIdIsReportedAtTheNextSynchronize) {
  const int64_t V = 10, D = 8;
  const std::vector<float> rows = random_normal(V * D, 7);
  const OnBoth table = same_floats(*cpu, *cuda, rows, {V, D});
  const std::vector<int32_t> bad = {1, 10, 3, -2};
  const OnBoth ids = same_ints(*cpu, *cuda, bad, {4});
  const OnBoth out = poisoned_both(*cpu, *cuda, {4, D});
  EXPECT_THROW(cpu->embed(table.cpu.view(), ids.cpu.view(), out.cpu.view()), Error);
  cuda->embed(table.gpu.view(), ids.gpu.view(), out.gpu.view());  // no host sync inside the op
  const std::string msg = reported_op_error(*cuda);
  EXPECT_NE(msg.find("is outside the vocabulary of size 10"), std::string::npos) << msg;
  EXPECT_TRUE(msg.find("token id 10 (position 1)") != std::string::npos ||
              msg.find("token id -2 (position 3)") != std::string::npos)
      << msg;
  EXPECT_NO_THROW(check_op_errors(*cuda));  // reported once
  const std::vector<float> got = download_f32(*cuda, out.gpu.view());
  std::vector<float> want(4 * D, 0.0f);
  for (int64_t d = 0; d < D; ++d) {
    want[0 * D + d] = rows[1 * D + d];
    want[2 * D + d] = rows[3 * D + d];
  }
  EXPECT_TRUE(same_bits(got, want));  // bad rows are zeros, good rows are the table's
}

// scatter_rows puts source row i at keys[i] / divisor and leaves the other rows alone, converting
// like copy(); same-dtype copies (the 16-byte-word kernel, or memcpy for odd sizes) are exact.
TEST_F(CudaElementwise, ScatterRowsAndCopyMatchCpu) {
  const int64_t n = 5, w = 37, N = 7, divisor = 4;
  const std::vector<int32_t> keys = {8, 0, 21, 12, 7};  // rows 2, 0, 5, 3, 1
  uint32_t seed = 900;
  for (const DType src_t : {DType::kF32, DType::kBF16}) {
    for (const DType dst_t : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(str_cat("src ", dtype_label(src_t), " dst ", dtype_label(dst_t)));
      const OnBoth src = same_floats(*cpu, *cuda, random_normal(n * w, ++seed), {n, w}, src_t);
      const OnBoth dst = same_floats(*cpu, *cuda, random_normal(N * w, ++seed), {N, w}, dst_t);
      const OnBoth k = same_ints(*cpu, *cuda, keys, {n});
      cpu->scatter_rows(src.cpu.view(), k.cpu.view(), divisor, dst.cpu.view());
      cuda->scatter_rows(src.gpu.view(), k.gpu.view(), divisor, dst.gpu.view());
      EXPECT_TRUE(
          same_bits(download_f32(*cuda, dst.gpu.view()), rounded_to(download_f32(*cpu, dst.cpu.view()), dst_t)));
    }
  }
  const std::pair<Shape, DType> copies[] = {{{129, 512}, DType::kBF16}, {{7}, DType::kF32}, {{3, 3}, DType::kBF16}};
  for (const auto& [shape, dt] : copies) {
    SCOPED_TRACE(str_cat("copy ", shape_str(shape), " ", dtype_label(dt)));
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    const OnBoth src = same_floats(*cpu, *cuda, random_normal(count, ++seed), shape, dt);
    ops::DeviceBuffer out = poisoned(*cuda, dt, shape);
    cuda->copy(src.gpu.view(), out.view());
    EXPECT_TRUE(same_bits(download_f32(*cuda, out.view()), download_f32(*cuda, src.gpu.view())));
  }
}

TEST_F(CudaElementwise, ScatterRowsKeyOutsideDstIsReported) {
  const OnBoth src = same_floats(*cpu, *cuda, random_normal(2 * 8, 950), {2, 8});
  const OnBoth dst = same_floats(*cpu, *cuda, random_normal(3 * 8, 951), {3, 8});
  const OnBoth k = same_ints(*cpu, *cuda, std::vector<int32_t>{4, 13}, {2});  // 13 / 4 = 3: past the 3 rows
  EXPECT_THROW(cpu->scatter_rows(src.cpu.view(), k.cpu.view(), 4, dst.cpu.view()), Error);
  cuda->scatter_rows(src.gpu.view(), k.gpu.view(), 4, dst.gpu.view());
  const std::string msg = reported_op_error(*cuda);
  EXPECT_NE(msg.find("scatter_rows: key 13"), std::string::npos) << msg;
}

TEST_F(CudaElementwise, HcExpandCopiesTheRowIntoEveryStream) {
  uint32_t seed = 200;
  for (const int64_t T : {1, 7, 300}) {
    for (const int64_t D : {19, 4096}) {
      for (const DType e_t : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(str_cat("T ", T, " D ", D, " e ", dtype_label(e_t)));
        const OnBoth e = same_floats(*cpu, *cuda, random_normal(T * D, ++seed), {T, D}, e_t);
        const OnBoth X = poisoned_both(*cpu, *cuda, {T, 4, D});
        cpu->hc_expand(e.cpu.view(), X.cpu.view());
        cuda->hc_expand(e.gpu.view(), X.gpu.view());
        EXPECT_TRUE(same_bits(download_f32(*cuda, X.gpu.view()), download_f32(*cpu, X.cpu.view())));
      }
    }
  }
}

TEST_F(CudaElementwise, RmsNormMatchesCpu) {
  uint32_t seed = 300;
  // Warp-per-row (n <= 1024) and block-per-row paths, packed and unpacked rows, rank 3 views.
  for (const Shape& shape :
       {Shape{7, 19}, Shape{1, 1024}, Shape{2, 1025}, Shape{300, 4096}, Shape{300, 64, 512}, Shape{1, 16384}}) {
    const int64_t n = shape.back(), numel = shape_numel(shape);
    for (const DType x_t : {DType::kF32, DType::kBF16}) {
      for (const int wkind : {0, 1, 2}) {  // no weight, F32 weight, BF16 weight
        for (const bool in_place : {false, true}) {
          SCOPED_TRACE(
              str_cat("shape ", shape_str(shape), " x ", dtype_label(x_t), " weight ", wkind, " in place ", in_place));
          std::vector<float> xv = random_normal(numel, ++seed, 3.0f);
          for (size_t i = 0; i < xv.size(); i += 7) xv[i] += 1.5f;
          OnBoth x = same_floats(*cpu, *cuda, xv, shape, x_t);
          const DType w_t = wkind == 2 ? DType::kBF16 : DType::kF32;
          std::vector<float> wv = random_normal(n, ++seed, 0.5f);
          for (float& w : wv) w += 1.0f;
          const OnBoth w = same_floats(*cpu, *cuda, wv, {n}, w_t);
          const OnBoth fresh = poisoned_both(*cpu, *cuda, shape, x_t);
          const TensorView out_c = in_place ? x.cpu.view() : fresh.cpu.view();
          const TensorView out_g = in_place ? x.gpu.view() : fresh.gpu.view();
          const TensorView wc = w.cpu.view(), wg = w.gpu.view();
          cpu->rms_norm(x.cpu.view(), wkind ? &wc : nullptr, 1e-6f, out_c);
          cuda->rms_norm(x.gpu.view(), wkind ? &wg : nullptr, 1e-6f, out_g);
          EXPECT_TRUE(within(download_f32(*cuda, out_g), download_f32(*cpu, out_c),
                             x_t == DType::kF32 ? kF32Budget : kBf16Budget));
        }
      }
    }
  }
}

TEST_F(CudaElementwise, RopeMatchesCpuAtLargePositions) {
  struct Case {
    int64_t T, n_vec, dim, rope_dim;
  };
  uint32_t seed = 400;
  for (const Case c :
       {Case{7, 3, 24, 8}, Case{7, 5, 10, 10}, Case{1, 64, 512, 64}, Case{7, 1, 512, 64}, Case{300, 64, 512, 64}}) {
    const int64_t half = c.rope_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / c.rope_dim));
    std::vector<int32_t> pos = random_ids(c.T, 200000, ++seed);
    pos[0] = c.T == 1 ? 100000 : 0;
    if (c.T > 2) pos[1] = 100000;
    for (const DType x_t : {DType::kF32, DType::kBF16}) {
      for (const bool inverse : {false, true}) {
        SCOPED_TRACE(str_cat("T ", c.T, " n_vec ", c.n_vec, " dim ", c.dim, " rope ", c.rope_dim, " x ",
                             dtype_label(x_t), " inverse ", inverse));
        OnBoth x = same_floats(*cpu, *cuda, random_normal(c.T * c.n_vec * c.dim, ++seed), {c.T, c.n_vec, c.dim}, x_t);
        const OnBoth p = same_ints(*cpu, *cuda, pos, {c.T});
        const OnBoth f = same_floats(*cpu, *cuda, inv_freq, {half});
        cpu->rope(x.cpu.view(), p.cpu.view(), f.cpu.view(), c.rope_dim, inverse);
        cuda->rope(x.gpu.view(), p.gpu.view(), f.gpu.view(), c.rope_dim, inverse);
        EXPECT_TRUE(within(download_f32(*cuda, x.gpu.view()), download_f32(*cpu, x.cpu.view()),
                           x_t == DType::kF32 ? 1e-6 : kBf16Budget));
      }
    }
  }
}

TEST_F(CudaElementwise, RopeThenInverseRopeIsTheIdentity) {
  const int64_t T = 7, V = 4, dim = 64, rope_dim = 64;
  const std::vector<float> xv = random_normal(T * V * dim, 450);
  std::vector<float> inv_freq(rope_dim / 2);
  for (int64_t i = 0; i < rope_dim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / rope_dim);
  const ops::DeviceBuffer x = upload_f32(*cuda, xv, {T, V, dim});
  const std::vector<int32_t> pos = {0, 1, 2, 1000, 65535, 100000, 163839};
  const ops::DeviceBuffer p =
      upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {T}, const_cast<int32_t*>(pos.data())});
  const ops::DeviceBuffer f = upload_f32(*cuda, inv_freq, {rope_dim / 2});
  cuda->rope(x.view(), p.view(), f.view(), rope_dim, false);
  const std::vector<float> rotated = download_f32(*cuda, x.view());
  EXPECT_GT(rel_l2(rotated, xv), 0.1);  // it did rotate
  cuda->rope(x.view(), p.view(), f.view(), rope_dim, true);
  EXPECT_TRUE(within(download_f32(*cuda, x.view()), xv, 1e-6));
}

TEST_F(CudaElementwise, IotaWritesPositions) {
  struct Case {
    int64_t n, start, step;
  };
  for (const Case c : {Case{1, 5, 1}, Case{300, 1000, 4}, Case{7, 10, -3}, Case{129, -64, 2}, Case{3, 100000, 0}}) {
    SCOPED_TRACE(str_cat("n ", c.n, " start ", c.start, " step ", c.step));
    const OnBoth out = poisoned_both(*cpu, *cuda, {c.n}, DType::kI32);
    cpu->iota(out.cpu.view(), c.start, c.step);
    cuda->iota(out.gpu.view(), c.start, c.step);
    const auto got = download_as<int32_t>(*cuda, out.gpu.view());
    EXPECT_EQ(got, download_as<int32_t>(*cpu, out.cpu.view()));
    for (int64_t i = 0; i < c.n; ++i) ASSERT_EQ(got[i], c.start + i * c.step) << "i " << i;
  }
  const ops::DeviceBuffer out = poisoned(*cuda, DType::kI32, {3});
  EXPECT_THROW(cuda->iota(out.view(), INT32_MAX - 1, 1), Error);
}

TEST_F(CudaElementwise, AddIsExact) {
  uint32_t seed = 500;
  for (const Shape& shape : {Shape{7, 19}, Shape{300, 4096}, Shape{1, 4096}}) {
    const int64_t n = shape_numel(shape);
    for (const DType t : {DType::kF32, DType::kBF16}) {
      for (const bool alias : {false, true}) {
        SCOPED_TRACE(str_cat("shape ", shape_str(shape), " ", dtype_label(t), " out aliases a ", alias));
        OnBoth a = same_floats(*cpu, *cuda, random_normal(n, ++seed), shape, t);
        const OnBoth b = same_floats(*cpu, *cuda, random_normal(n, ++seed, 2.0f), shape, t);
        const OnBoth fresh = poisoned_both(*cpu, *cuda, shape, t);
        const TensorView oc = alias ? a.cpu.view() : fresh.cpu.view(), og = alias ? a.gpu.view() : fresh.gpu.view();
        cpu->add(a.cpu.view(), b.cpu.view(), oc);
        cuda->add(a.gpu.view(), b.gpu.view(), og);
        // The GPU adds in float32 and rounds once to the output dtype: the CPU's F32 sum, rounded.
        EXPECT_TRUE(same_bits(download_f32(*cuda, og), rounded_to(download_f32(*cpu, oc), t)));
      }
    }
  }
  // Mixed dtypes: F32 + BF16 -> F32.
  const OnBoth a = same_floats(*cpu, *cuda, random_normal(7 * 19, 550), {7, 19});
  const OnBoth b = same_floats(*cpu, *cuda, random_normal(7 * 19, 551), {7, 19}, DType::kBF16);
  const OnBoth out = poisoned_both(*cpu, *cuda, {7, 19});
  cpu->add(a.cpu.view(), b.cpu.view(), out.cpu.view());
  cuda->add(a.gpu.view(), b.gpu.view(), out.gpu.view());
  EXPECT_TRUE(same_bits(download_f32(*cuda, out.gpu.view()), download_f32(*cpu, out.cpu.view())));
}

// Rows that hit the edges of the scale rule: amax / 448 exactly a power of two, one ulp above
// it, amax under the 1e-4 floor, values at the E4M3 rounding midpoints, and (F32) Inf / NaN
// which must pass through untouched and not enter amax.
void add_fp8_edge_rows(std::vector<float>& v, int64_t width, int64_t n_nope, bool non_finite) {
  auto row = [&](int64_t r) { return v.data() + r * width; };
  row(0)[3] = 448.0f * 0.125f;
  row(1)[5] = std::nextafter(448.0f * 0.125f, 1e30f);
  for (int64_t i = 0; i < width; ++i) row(2)[i] *= 1e-9f;
  for (int64_t i = 0; i < n_nope; ++i) row(3)[i] = (static_cast<float>(i % 16) + 0.5f) * 0.0625f;  // ties
  if (non_finite) {
    row(4)[1] = INFINITY;
    row(4)[2] = -INFINITY;
    row(4)[n_nope - 1] = std::nanf("");
  }
}

TEST_F(CudaElementwise, QdqFp8NopeIsBitExact) {
  struct Case {
    int64_t rows, width, n_nope;
  };
  uint32_t seed = 600;
  for (const Case c : {Case{7, 512, 448}, Case{300, 512, 448}, Case{5, 16, 8}, Case{9, 200, 100}, Case{11, 512, 512},
                       Case{3, 64, 0}}) {
    for (const DType t : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(str_cat("rows ", c.rows, " width ", c.width, " n_nope ", c.n_nope, " ", dtype_label(t)));
      std::vector<float> xv = scaled_rows(c.rows, c.width, ++seed);
      if (c.rows >= 5 && c.n_nope >= 8) add_fp8_edge_rows(xv, c.width, c.n_nope, t == DType::kF32);
      OnBoth x = same_floats(*cpu, *cuda, xv, {c.rows, c.width}, t);
      cpu->qdq(x.cpu.view(), ops::Qdq::kFp8Nope, c.n_nope);
      cuda->qdq(x.gpu.view(), ops::Qdq::kFp8Nope, c.n_nope);
      // E4M3 values times powers of two are BF16 values: both dtypes must match exactly.
      EXPECT_TRUE(same_bits(download_f32(*cuda, x.gpu.view()), download_f32(*cpu, x.cpu.view())));
    }
  }
}

TEST_F(CudaElementwise, QdqHadamardFp4IsBitExact) {
  struct Case {
    int64_t rows, width;
  };
  uint32_t seed = 700;
  for (const Case c : {Case{5, 8}, Case{7, 32}, Case{448, 128}, Case{19200, 128}, Case{3, 1024}, Case{2, 8192}}) {
    for (const DType t : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(str_cat("rows ", c.rows, " width ", c.width, " ", dtype_label(t)));
      std::vector<float> xv = scaled_rows(c.rows, c.width, ++seed);
      for (int64_t i = 0; i < c.width; ++i) xv[i] = i == 0 ? 6.0f * std::sqrt(static_cast<float>(c.width)) : 0.0f;
      OnBoth x = same_floats(*cpu, *cuda, xv, {c.rows, c.width}, t);
      cpu->qdq(x.cpu.view(), ops::Qdq::kHadamardFp4, 0);
      cuda->qdq(x.gpu.view(), ops::Qdq::kHadamardFp4, 0);
      EXPECT_TRUE(same_bits(download_f32(*cuda, x.gpu.view()), download_f32(*cpu, x.cpu.view())));
    }
  }
  const ops::DeviceBuffer odd = upload_f32(*cuda, random_normal(2 * 24, 799), {2, 24});
  EXPECT_THROW(cuda->qdq(odd.view(), ops::Qdq::kHadamardFp4, 0), Error);
}

}  // namespace
}  // namespace clawmine::test
