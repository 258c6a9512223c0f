// The decode-size (T = 1 .. 64) paths of the row-wise CUDA kernels against the CPU reference on
// fresh random inputs, outputs poisoned first:
//  - hc_pre / hc_head through the fused kernel (mix split over many blocks, the last block of each
//    token finishes it through a per-token counter): T in {1, 3, 64} and 65 (the prefill pair of
//    kernels), called again on new streams to show the counters start from zero each time, run
//    twice on the same inputs bit for bit, and recorded into a decode-step graph whose replays
//    equal the eager op bit for bit;
//  - rms_norm with 32..256 threads per row and the row held in registers (packed and unpacked
//    rows, aligned and unaligned weights, in place);
//  - rope with one thread per 4 pairs (and the 1-pair fallback), several tokens per block;
//  - qdq: FP8 with 8 elements per thread (groups of 8 lanes per block of 64), the register/shuffle
//    Hadamard for rows of 32..512, both bit-exact, including rows that start unaligned.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

using model::deepseek_v4::HyperConnectionWeights;

class CudaSmallT : public GpuTest {};

constexpr int64_t kHc = 4;

// A view of `shape` starting `elems` elements into b (b holds at least that many more).
TensorView offset_view(const ops::DeviceBuffer& b, const Shape& shape, int64_t elems) {
  TensorView v = b.view();
  v.data = static_cast<char*>(v.data) + elems * static_cast<int64_t>(dtype_size(v.dtype));
  v.shape = shape;
  return v;
}

struct HcSet {
  OnBoth fn, base, scale;
  HyperConnectionWeights cpu() const { return {fn.cpu.view(), base.cpu.view(), scale.cpu.view()}; }
  HyperConnectionWeights gpu() const { return {fn.gpu.view(), base.gpu.view(), scale.gpu.view()}; }
};

// fn ~ N(0, 1/sqrt(hc*D)) (mixes O(1), no saturated gate), base ~ N(0, 1), scale in [1, ~3].
HcSet make_hc_weights(ops::Backend& cpu, ops::Backend& gpu, int64_t n_mix, int64_t D, int64_t n_scale, DType fn_t,
                      uint32_t seed) {
  const int64_t n = kHc * D;
  std::vector<float> scale = random_normal(n_scale, seed + 3);
  for (float& s : scale) s = 1.0f + std::fabs(s);
  return {same_floats(cpu, gpu, random_normal(n_mix * n, seed + 1, 1.0f / std::sqrt(static_cast<float>(n))), {n_mix, n},
                      fn_t),
          same_floats(cpu, gpu, random_normal(n_mix, seed + 2), {n_mix}), same_floats(cpu, gpu, scale, {n_scale})};
}

TEST_F(CudaSmallT, HcPreAndHeadMatchCpuAtDecodeSizes) {
  uint32_t seed = 11000;
  const int64_t n_mix = (2 + kHc) * kHc;
  for (const int64_t T : {1, 3, 64, 65}) {
    for (const int64_t D : {4096, 1024, 19, 8192}) {
      for (const DType fn_t : {DType::kF32, DType::kBF16}) {
        for (const DType act : {DType::kF32, DType::kBF16}) {
          if (D == 19 && (fn_t != DType::kF32 || act != DType::kF32)) continue;
          if (D == 8192 && (T > 3 || fn_t != DType::kF32)) continue;  // two collapse rounds per thread
          const HcSet w = make_hc_weights(*cpu, *cuda, n_mix, D, 3, fn_t, seed += 10);
          const HcSet wh = make_hc_weights(*cpu, *cuda, kHc, D, 1, fn_t, seed += 10);
          ops::HcParams p;
          p.sinkhorn_iters = 20;
          // Twice on new streams: the second call finds its counters back at zero.
          for (int call = 0; call < 2; ++call) {
            SCOPED_TRACE(str_cat("T ", T, " D ", D, " fn ", dtype_label(fn_t), " out ", dtype_label(act), " call ",
                                 call));
            const OnBoth X = same_floats(*cpu, *cuda, random_normal(T * kHc * D, ++seed, 2.0f), {T, kHc, D});
            const OnBoth x_in = poisoned_both(*cpu, *cuda, {T, D}, act);
            const OnBoth post = poisoned_both(*cpu, *cuda, {T, kHc});
            const OnBoth comb = poisoned_both(*cpu, *cuda, {T, kHc, kHc});
            const OnBoth y = poisoned_both(*cpu, *cuda, {T, D}, act);
            cpu->hc_pre(X.cpu.view(), w.cpu(), p, x_in.cpu.view(), post.cpu.view(), comb.cpu.view());
            cuda->hc_pre(X.gpu.view(), w.gpu(), p, x_in.gpu.view(), post.gpu.view(), comb.gpu.view());
            cpu->hc_head(X.cpu.view(), wh.cpu(), p, y.cpu.view());
            cuda->hc_head(X.gpu.view(), wh.gpu(), p, y.gpu.view());
            const double budget = act == DType::kF32 ? kF32Budget : kBf16Budget;
            const std::vector<float> got_x = download_f32(*cuda, x_in.gpu.view());
            const std::vector<float> got_post = download_f32(*cuda, post.gpu.view());
            const std::vector<float> got_comb = download_f32(*cuda, comb.gpu.view());
            const std::vector<float> got_y = download_f32(*cuda, y.gpu.view());
            EXPECT_TRUE(within(got_x, download_f32(*cpu, x_in.cpu.view()), budget)) << "x_in";
            EXPECT_TRUE(within(got_post, download_f32(*cpu, post.cpu.view()), kF32Budget)) << "post";
            EXPECT_TRUE(within(got_comb, download_f32(*cpu, comb.cpu.view()), kF32Budget)) << "comb";
            EXPECT_TRUE(within(got_y, download_f32(*cpu, y.cpu.view()), budget)) << "hc_head y";
            // The same inputs again: the same bits (the partials are summed in a fixed order
            // whichever block finishes).
            cuda->fill(x_in.gpu.view(), std::nanf(""));
            cuda->fill(comb.gpu.view(), std::nanf(""));
            cuda->fill(y.gpu.view(), std::nanf(""));
            cuda->hc_pre(X.gpu.view(), w.gpu(), p, x_in.gpu.view(), post.gpu.view(), comb.gpu.view());
            cuda->hc_head(X.gpu.view(), wh.gpu(), p, y.gpu.view());
            EXPECT_TRUE(same_bits(download_f32(*cuda, x_in.gpu.view()), got_x)) << "x_in rerun";
            EXPECT_TRUE(same_bits(download_f32(*cuda, comb.gpu.view()), got_comb)) << "comb rerun";
            EXPECT_TRUE(same_bits(download_f32(*cuda, y.gpu.view()), got_y)) << "y rerun";
          }
        }
      }
    }
  }
}

// hc_pre + hc_head recorded into a decode-step graph (BF16 activations, graphs on, PDL as the
// process has it): every replay on fresh streams equals the eager ops bit for bit.
TEST_F(CudaSmallT, HcFusedReplaysEqualEager) {
  cuda.reset();
  backend::cuda::CudaOptions o;
  o.memory_fraction = 0.5;
  o.act_dtype = DType::kBF16;
  o.graphs = true;
  cuda = backend::cuda::make_cuda_backend(o);
  uint32_t seed = 12000;
  const int64_t D = 4096;
  for (const int64_t T : {1, 3}) {
    SCOPED_TRACE(str_cat("T ", T));
    const HcSet w = make_hc_weights(*cpu, *cuda, (2 + kHc) * kHc, D, 3, DType::kF32, seed += 10);
    const HcSet wh = make_hc_weights(*cpu, *cuda, kHc, D, 1, DType::kF32, seed += 10);
    ops::HcParams p;
    p.sinkhorn_iters = 20;
    ops::DeviceBuffer X(*cuda, DType::kF32, {T, kHc, D});
    const ops::DeviceBuffer x_in = poisoned(*cuda, DType::kBF16, {T, D});
    const ops::DeviceBuffer post = poisoned(*cuda, DType::kF32, {T, kHc});
    const ops::DeviceBuffer comb = poisoned(*cuda, DType::kF32, {T, kHc, kHc});
    const ops::DeviceBuffer y = poisoned(*cuda, DType::kBF16, {T, D});
    auto ops_on_gpu = [&] {
      const size_t mark = cuda->scratch_mark();
      cuda->hc_pre(X.view(), w.gpu(), p, x_in.view(), post.view(), comb.view());
      cuda->hc_head(X.view(), wh.gpu(), p, y.view());
      cuda->scratch_reset(mark);
    };
    auto outputs = [&] {
      std::vector<std::vector<float>> r;
      for (const ops::DeviceBuffer* b : {&x_in, &post, &comb, &y}) r.push_back(download_f32(*cuda, b->view()));
      return r;
    };
    const uint64_t key = 0x5a11c000u + static_cast<uint64_t>(T);
    int replays = 0;
    for (int step = 0; step < 6; ++step) {
      SCOPED_TRACE(str_cat("step ", step));
      const std::vector<float> x0 = random_normal(T * kHc * D, ++seed, 2.0f);
      cuda->upload(x0.data(), X.view());
      ops_on_gpu();
      const auto eager = outputs();
      for (const ops::DeviceBuffer* b : {&x_in, &post, &comb, &y}) cuda->fill(b->view(), std::nanf(""));
      if (cuda->replay_step_graph(key)) {
        ++replays;
      } else {
        cuda->begin_step_graph(key);
        ops_on_gpu();
        cuda->end_step_graph();
      }
      const auto graphed = outputs();
      for (size_t i = 0; i < eager.size(); ++i) EXPECT_TRUE(same_bits(graphed[i], eager[i])) << "output " << i;
      // And the CPU on the same step.
      const OnBoth Xc = same_floats(*cpu, *cuda, x0, {T, kHc, D});
      const OnBoth xr = poisoned_both(*cpu, *cuda, {T, D});
      const OnBoth pr = poisoned_both(*cpu, *cuda, {T, kHc});
      const OnBoth cr = poisoned_both(*cpu, *cuda, {T, kHc, kHc});
      cpu->hc_pre(Xc.cpu.view(), w.cpu(), p, xr.cpu.view(), pr.cpu.view(), cr.cpu.view());
      EXPECT_TRUE(within(graphed[0], download_f32(*cpu, xr.cpu.view()), kBf16Budget)) << "x_in vs cpu";
      EXPECT_TRUE(within(graphed[2], download_f32(*cpu, cr.cpu.view()), kF32Budget)) << "comb vs cpu";
    }
    EXPECT_GE(replays, 2) << "the step graph was never replayed";
  }
}

TEST_F(CudaSmallT, RmsNormAtDecodeSizes) {
  uint32_t seed = 13000;
  for (const Shape& shape : {Shape{1, 4096}, Shape{3, 4096}, Shape{1, 1024}, Shape{3, 1024}, Shape{1, 64, 512},
                             Shape{3, 64, 512}, Shape{1, 512}, Shape{3, 128}, Shape{3, 8192}, Shape{1, 16384},
                             Shape{3, 1000}, Shape{1, 36}}) {
    const int64_t n = shape.back(), numel = shape_numel(shape);
    for (const DType x_t : {DType::kF32, DType::kBF16}) {
      for (const int wkind : {0, 1, 2, 3}) {  // none, F32, BF16, BF16 starting one element in (unaligned)
        for (const bool in_place : {false, true}) {
          SCOPED_TRACE(
              str_cat("shape ", shape_str(shape), " x ", dtype_label(x_t), " weight ", wkind, " in place ", in_place));
          std::vector<float> xv = random_normal(numel, ++seed, 3.0f);
          for (size_t i = 0; i < xv.size(); i += 5) xv[i] += 1.5f;
          OnBoth x = same_floats(*cpu, *cuda, xv, shape, x_t);
          std::vector<float> wv = random_normal(n + 1, ++seed, 0.5f);
          for (float& v : wv) v += 1.0f;
          const OnBoth w = same_floats(*cpu, *cuda, wv, {n + 1}, wkind == 1 ? DType::kF32 : DType::kBF16);
          const int64_t off = wkind == 3 ? 1 : 0;
          const TensorView wc = offset_view(w.cpu, {n}, off), wg = offset_view(w.gpu, {n}, off);
          const OnBoth fresh = poisoned_both(*cpu, *cuda, shape, x_t);
          const TensorView out_c = in_place ? x.cpu.view() : fresh.cpu.view();
          const TensorView out_g = in_place ? x.gpu.view() : fresh.gpu.view();
          cpu->rms_norm(x.cpu.view(), wkind ? &wc : nullptr, 1e-6f, out_c);
          cuda->rms_norm(x.gpu.view(), wkind ? &wg : nullptr, 1e-6f, out_g);
          EXPECT_TRUE(within(download_f32(*cuda, out_g), download_f32(*cpu, out_c),
                             x_t == DType::kF32 ? kF32Budget : kBf16Budget));
        }
      }
    }
  }
}

TEST_F(CudaSmallT, RopeAtDecodeSizes) {
  struct Case {
    int64_t T, n_vec, dim, rope_dim;
  };
  uint32_t seed = 14000;
  for (const Case c : {Case{1, 64, 512, 64}, Case{3, 64, 512, 64}, Case{1, 1, 512, 64}, Case{3, 1, 512, 64},
                       Case{1, 64, 128, 64}, Case{3, 1, 128, 64}, Case{37, 1, 512, 64}, Case{3, 5, 10, 10},
                       Case{1, 3, 24, 8}, Case{3, 2, 20, 12}}) {
    const int64_t half = c.rope_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / c.rope_dim));
    std::vector<int32_t> pos(static_cast<size_t>(c.T));
    for (int64_t t = 0; t < c.T; ++t) pos[t] = static_cast<int32_t>((t * 7919 + 100000) % 200000);
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

TEST_F(CudaSmallT, QdqFp8AtDecodeIsBitExact) {
  struct Case {
    int64_t rows, width, n_nope, offset;  // offset: the rows start this many elements into the buffer
  };
  uint32_t seed = 15000;
  for (const Case c : {Case{1, 512, 448, 0}, Case{3, 512, 448, 0}, Case{1, 512, 448, 1}, Case{3, 200, 100, 0},
                       Case{3, 64, 64, 0}, Case{2, 72, 72, 0}}) {
    for (const DType t : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(str_cat("rows ", c.rows, " width ", c.width, " n_nope ", c.n_nope, " offset ", c.offset, " ",
                           dtype_label(t)));
      const int64_t total = c.rows * c.width + c.offset;
      std::vector<float> xv = random_normal(total, ++seed);
      for (int64_t r = 0; r < c.rows; ++r)
        for (int64_t i = 0; i < c.width; ++i) xv[c.offset + r * c.width + i] *= std::pow(10.0f, float(r % 5) - 2.0f);
      float* row0 = xv.data() + c.offset;
      row0[3] = 448.0f * 0.125f;                             // amax / 448 a power of two
      row0[c.n_nope - 1] = INFINITY;                         // passes through, not in amax
      if (c.n_nope > 9) row0[9] = std::nanf("");             // likewise
      if (c.rows > 1) row0[c.width + 1] = -INFINITY;
      const OnBoth x = same_floats(*cpu, *cuda, xv, {total}, t);
      cpu->qdq(offset_view(x.cpu, {c.rows, c.width}, c.offset), ops::Qdq::kFp8Nope, c.n_nope);
      cuda->qdq(offset_view(x.gpu, {c.rows, c.width}, c.offset), ops::Qdq::kFp8Nope, c.n_nope);
      EXPECT_TRUE(same_bits(download_f32(*cuda, x.gpu.view()), download_f32(*cpu, x.cpu.view())));
    }
  }
}

TEST_F(CudaSmallT, QdqHadamardAtDecodeIsBitExact) {
  struct Case {
    int64_t rows, width, offset;
  };
  uint32_t seed = 16000;
  for (const Case c : {Case{1, 128, 0}, Case{3, 128, 0}, Case{64, 128, 0}, Case{3, 32, 0}, Case{3, 64, 0},
                       Case{3, 256, 0}, Case{9, 512, 0}, Case{3, 128, 2}, Case{3, 16, 0}}) {
    for (const DType t : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(str_cat("rows ", c.rows, " width ", c.width, " offset ", c.offset, " ", dtype_label(t)));
      const int64_t total = c.rows * c.width + c.offset;
      std::vector<float> xv = random_normal(total, ++seed);
      for (int64_t r = 0; r < c.rows; ++r)
        for (int64_t i = 0; i < c.width; ++i) xv[c.offset + r * c.width + i] *= std::pow(10.0f, float(r % 7) - 3.0f);
      // Row 0: a single spike, so one block's amax / 6 is exactly a power of two.
      for (int64_t i = 0; i < c.width; ++i)
        xv[c.offset + i] = i == 0 ? 6.0f * std::sqrt(static_cast<float>(c.width)) : 0.0f;
      const OnBoth x = same_floats(*cpu, *cuda, xv, {total}, t);
      cpu->qdq(offset_view(x.cpu, {c.rows, c.width}, c.offset), ops::Qdq::kHadamardFp4, 0);
      cuda->qdq(offset_view(x.gpu, {c.rows, c.width}, c.offset), ops::Qdq::kHadamardFp4, 0);
      EXPECT_TRUE(same_bits(download_f32(*cuda, x.gpu.view()), download_f32(*cpu, x.cpu.view())));
    }
  }
}

}  // namespace
}  // namespace clawmine::test
