// Programmatic dependent launch (common.cuh, launch_kernel): every backend kernel may start
// while the kernel before it is finishing, and waits (griddepcontrol.wait) before it touches
// memory, so results must equal plain stream order bit for bit. A long chain of dependent
// small ops (per iteration: rms_norm -> linear GEMV -> rope in place -> residual add in place,
// BF16 activations, the linear cycling through dense BF16, FP8 E8M0, MXFP4 and NVFP4 weights)
// runs on fresh random data with PDL on and off, eagerly and as a recorded decode-step graph
// (recorded with PDL on and with PDL off), and every result is compared bit for bit; one
// iteration is also checked against the CPU reference within the BF16 budget. The decode GEMV
// kernels load weights before griddepcontrol.wait (linear_kernels.cuh, weights_before_wait):
// CudaPdlGemv runs every shape of the GEMV tests behind an rms_norm that writes its input, as one
// recorded step graph with PDL on, against eager launches with PDL off, bit for bit. Skips
// without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <future>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "core/error.h"
#include "unit/backend_cuda/linear_test_util.h"
#include "unit/backend_cuda/same_inputs.h"

// linear_kernels.cuh (a CUDA header) declares these: the GEMV kernel choice and the streaming
// kernel's L2 prefetch, for tests.
namespace clawmine::backend::cuda {
enum class GemvKernel : int32_t;
void set_gemv_kernel(GemvKernel k);
void set_gemv_stream_l2_prefetch(bool on);
void set_gemv_pdl(int on);
}  // namespace clawmine::backend::cuda

namespace clawmine::test {
namespace {

constexpr int64_t kD = 1024;        // hidden size of the chain
constexpr int64_t kHeads = 8;       // y viewed [T, kHeads, kD / kHeads] for rope
constexpr int64_t kRopeDim = 64;    // trailing dims of each head rotated
constexpr int kIterations = 50;     // 4 ops each: 200 dependent ops
constexpr float kEps = 1e-6f;

class CudaPdl : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    pdl_before_ = backend::cuda::pdl_enabled();
    cuda.reset();  // the BF16, graphs-on backend of production decode instead
    backend::cuda::CudaOptions o;
    o.memory_fraction = 0.5;
    o.act_dtype = DType::kBF16;
    o.graphs = true;
    cuda = backend::cuda::make_cuda_backend(o);
  }
  void TearDown() override {
    if (cuda) backend::cuda::set_pdl_enabled_for_tests(pdl_before_);
  }
  bool pdl_before_ = true;
};

// Everything a chain touches: long-lived device buffers (fixed addresses, as a graph needs).
struct Chain {
  int64_t T = 1;
  std::vector<std::unique_ptr<TestLinear>> weights;
  ops::DeviceBuffer norm_w, inv_freq, positions, h, n, y;
  std::vector<float> norm_w_host, inv_freq_host;
  std::vector<int32_t> positions_host;
};

Chain make_chain(ops::Backend& cuda, int64_t T, uint32_t seed) {
  Chain c;
  c.T = T;
  const TestFormat formats[] = {TestFormat::kBF16, TestFormat::kFp8E8M0, TestFormat::kMxfp4, TestFormat::kNvfp4};
  for (TestFormat f : formats) {
    const std::vector<float> w = fast_normal(static_cast<size_t>(kD * kD), ++seed, 1.0f / std::sqrt(float(kD)));
    c.weights.push_back(make_linear(cuda, f, w, kD, kD, std::string("chain.") + format_label(f)));
  }
  c.norm_w_host = random_normal(kD, ++seed, 0.1f);
  for (float& v : c.norm_w_host) v = bf16_to_f32(f32_to_bf16(1.0f + v));
  c.norm_w = upload_f32(cuda, c.norm_w_host, {kD}, DType::kBF16);
  for (int64_t i = 0; i < kRopeDim / 2; ++i)
    c.inv_freq_host.push_back(std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(kRopeDim)));
  c.inv_freq = upload_f32(cuda, c.inv_freq_host, {kRopeDim / 2});
  std::mt19937 rng(++seed);
  for (int64_t t = 0; t < T; ++t) c.positions_host.push_back(static_cast<int32_t>(rng() % 100000));
  c.positions = upload_raw(cuda, TensorView{DType::kI32, Device::kCpu, {T}, c.positions_host.data()});
  c.h = ops::DeviceBuffer(cuda, DType::kBF16, {T, kD});
  c.n = poisoned(cuda, DType::kBF16, {T, kD});
  c.y = poisoned(cuda, DType::kBF16, {T, kD});
  return c;
}

// One iteration on any backend: n = rms_norm(h) * w; y = n @ W^T; rope(y); h = h + y.
void iteration(ops::Backend& be, const LinearWeight& w, const TensorView& norm_w, const TensorView& inv_freq,
               const TensorView& positions, const TensorView& h, const TensorView& n, const TensorView& y) {
  const int64_t T = h.dim(0);
  be.rms_norm(h, &norm_w, kEps, n);
  be.linear(n, w, y);
  be.rope(y.reshaped({T, kHeads, kD / kHeads}), positions, inv_freq, kRopeDim, /*inverse=*/false);
  be.add(h, y, h);
}

// The whole chain on the GPU (no host transfer inside: it may be captured).
void run_ops(ops::Backend& cuda, Chain& c, int iterations) {
  const size_t mark = cuda.scratch_mark();
  for (int i = 0; i < iterations; ++i)
    iteration(cuda, c.weights[static_cast<size_t>(i) % c.weights.size()]->dev, c.norm_w.view(), c.inv_freq.view(),
              c.positions.view(), c.h.view(), c.n.view(), c.y.view());
  cuda.scratch_reset(mark);
}

// Uploads h0 (already BF16-representable) into c.h.
void set_h(ops::Backend& cuda, Chain& c, const std::vector<float>& h0) {
  std::vector<uint16_t> bits(h0.size());
  for (size_t i = 0; i < h0.size(); ++i) bits[i] = f32_to_bf16(h0[i]);
  cuda.upload(bits.data(), c.h.view());
}

// h <- h0, then the chain eagerly with PDL on or off; h after it as F32 values.
std::vector<float> eager(ops::Backend& cuda, Chain& c, const std::vector<float>& h0, bool pdl) {
  backend::cuda::set_pdl_enabled_for_tests(pdl);
  set_h(cuda, c, h0);
  run_ops(cuda, c, kIterations);
  return download_f32(cuda, c.h.view());
}

// One decode "step" through the graph API: replays the graph under `key` when there is one,
// else issues the ops between begin/end (eager for the backend's first steps, then recorded).
// Returns whether it replayed.
bool graph_step(ops::Backend& cuda, Chain& c, uint64_t key) {
  if (cuda.replay_step_graph(key)) return true;
  cuda.begin_step_graph(key);
  run_ops(cuda, c, kIterations);
  cuda.end_step_graph();
  return false;
}

std::vector<float> fresh_h(int64_t T, uint32_t seed) {
  return rounded_to(random_normal(static_cast<size_t>(T * kD), seed), DType::kBF16);
}

TEST_F(CudaPdl, LongChainIsBitIdenticalWithAndWithoutPdl) {
  uint32_t seed = 9000;
  for (const int64_t T : {int64_t{1}, int64_t{3}}) {
    SCOPED_TRACE(str_cat("T ", T));
    Chain c = make_chain(*cuda, T, seed += 10);
    for (int rep = 0; rep < 3; ++rep) {
      const std::vector<float> h0 = fresh_h(T, ++seed);
      const std::vector<float> with_pdl = eager(*cuda, c, h0, true);
      const std::vector<float> without = eager(*cuda, c, h0, false);
      const std::vector<float> again = eager(*cuda, c, h0, true);
      EXPECT_TRUE(same_bits(with_pdl, without)) << "PDL on vs off, rep " << rep;
      EXPECT_TRUE(same_bits(again, without)) << "PDL on (second run) vs off, rep " << rep;
      double sq = 0;
      for (float v : without) sq += static_cast<double>(v) * v;
      EXPECT_TRUE(std::isfinite(sq) && sq > 0) << "the chain's result is not finite or is zero";
    }
  }
}

TEST_F(CudaPdl, OneIterationMatchesTheCpuReference) {
  uint32_t seed = 9100;
  for (const bool pdl : {true, false}) {
    for (const int64_t T : {int64_t{1}, int64_t{3}}) {
      Chain c = make_chain(*cuda, T, seed += 10);
      for (size_t wi = 0; wi < c.weights.size(); ++wi) {
        SCOPED_TRACE(str_cat("pdl ", pdl, " T ", T, " weight ", c.weights[wi]->host.name));
        backend::cuda::set_pdl_enabled_for_tests(pdl);
        const std::vector<float> h0 = fresh_h(T, ++seed);
        set_h(*cuda, c, h0);
        cuda->fill(c.n.view(), std::nanf(""));
        cuda->fill(c.y.view(), std::nanf(""));
        iteration(*cuda, c.weights[wi]->dev, c.norm_w.view(), c.inv_freq.view(), c.positions.view(), c.h.view(),
                  c.n.view(), c.y.view());
        const std::vector<float> got_y = download_f32(*cuda, c.y.view());
        const std::vector<float> got_h = download_f32(*cuda, c.h.view());

        std::vector<float> h = h0, n(h0.size(), std::nanf("")), y(h0.size(), std::nanf(""));
        std::vector<float> nw = c.norm_w_host, invf = c.inv_freq_host;
        std::vector<int32_t> pos = c.positions_host;
        auto hv = [&](std::vector<float>& v) { return TensorView{DType::kF32, Device::kCpu, {T, kD}, v.data()}; };
        const TensorView nwv{DType::kF32, Device::kCpu, {kD}, nw.data()};
        const TensorView fv{DType::kF32, Device::kCpu, {kRopeDim / 2}, invf.data()};
        const TensorView pv{DType::kI32, Device::kCpu, {T}, pos.data()};
        iteration(*cpu, c.weights[wi]->host, nwv, fv, pv, hv(h), hv(n), hv(y));
        EXPECT_TRUE(within(got_y, y, kBf16Budget)) << "y";
        EXPECT_TRUE(within(got_h, h, kBf16Budget)) << "h";
      }
    }
  }
}

TEST_F(CudaPdl, RecordedStepGraphEqualsEager) {
  uint32_t seed = 9200;
  for (const int64_t T : {int64_t{1}, int64_t{3}}) {
    SCOPED_TRACE(str_cat("T ", T));
    Chain c = make_chain(*cuda, T, seed += 10);
    // Graphs recorded with PDL on (production) and off, under different keys; each step
    // uploads fresh h (outside the graph) and must equal the eager chain on the same h.
    for (const bool pdl : {true, false}) {
      const uint64_t key = 0x9d1c0000u + static_cast<uint64_t>(T) * 2 + (pdl ? 1 : 0);
      int replays = 0;
      for (int step = 0; step < 6; ++step) {
        SCOPED_TRACE(str_cat("graph recorded with pdl ", pdl, ", step ", step));
        const std::vector<float> h0 = fresh_h(T, ++seed);
        const std::vector<float> ref = eager(*cuda, c, h0, true);
        backend::cuda::set_pdl_enabled_for_tests(pdl);
        set_h(*cuda, c, h0);
        replays += graph_step(*cuda, c, key) ? 1 : 0;
        EXPECT_TRUE(same_bits(download_f32(*cuda, c.h.view()), ref));
      }
      // The backend runs its first steps eagerly, then records: the last steps must be replays.
      EXPECT_GE(replays, 2) << "the step graph was never replayed";
    }
  }
}

// ---- the decode GEMV: weight loads before griddepcontrol.wait ----------------------------------

// With PDL on, a GEMV launch without a tile table issues its first weight loads (and, with the L2
// prefetch, its segment's prefetch) before the wait, while the kernel before it still runs;
// activations after. Each case: rms_norm writes the GEMV's input n (one n buffer per shape, so
// the next case's rms_norm overwrites what this GEMV reads: a write-after-read across the
// overlap), then the projection writes its own F32 output. All cases (the shapes of
// linear_test.cpp's GEMV tests and the shared expert's swiglu_mlp, whose fused w1/w3 launch reads
// an uploaded descriptor table before the wait; every tensor-core format; T = 1, 2, 3, 4, 8) are
// one step, recorded as a graph with PDL on and replayed on fresh inputs; every output must have
// the bits of the same step issued eagerly with PDL off. Under the default kernel choice (auto:
// the FMA kernel for BF16 and small FP8 at <= 2 tokens, else streaming), the streaming kernel
// forced, and streaming with its L2 prefetch, each with PDL on for every launch; and auto with
// PDL on for the GEMV launches alone (set_gemv_pdl, CLAWMINE_GEMV_PDL).
class CudaPdlGemv : public CudaPdl {
 protected:
  void TearDown() override {
    if (cuda) {
      backend::cuda::set_gemv_kernel(static_cast<backend::cuda::GemvKernel>(0));  // kDefault
      backend::cuda::set_gemv_stream_l2_prefetch(false);
      backend::cuda::set_gemv_pdl(-1);
    }
    CudaPdl::TearDown();
  }
};

enum class GemvOp { kLinear, kGrouped, kSwiglu };
struct GemvShape {
  GemvOp op;
  int64_t out, in, groups;  // linear/grouped: weight [out, in / groups]; swiglu: D = out = in, I = groups
};
// One projection weight (linear, grouped) or one expert (swiglu: w1, w3, w2) in one format.
struct GemvWeight {
  size_t shape = 0;
  std::vector<std::unique_ptr<TestLinear>> w;
  ExpertWeights expert;  // swiglu: views of w[0..2] (a stable address: swiglu_mlp caches its table)
};
struct GemvStepCase {
  size_t weight;
  int64_t T;
  ops::DeviceBuffer h, y;  // h [T, in] BF16 (fresh each step), y [T, out] F32
};

TEST_F(CudaPdlGemv, DecodeShapesInAPdlStepGraphEqualEagerWithoutPdl) {
  // linear_test.cpp's streaming shapes (partial m-tiles, clusters of 2 and 4 with empty
  // segments, 4 and 8 warps per m-tile), wq_b (one warp per m-tile looping over 8 load groups:
  // the L2 prefetch path), grouped problems (wo_a-like, 3 groups of 40 x 1056) and the V4-Flash
  // shared expert (D 4096, I 2048).
  const GemvShape shapes[] = {{GemvOp::kLinear, 131, 1056, 1},    {GemvOp::kLinear, 40, 4128, 1},
                              {GemvOp::kLinear, 512, 4096, 1},    {GemvOp::kLinear, 1024, 4096, 1},
                              {GemvOp::kLinear, 8192, 1024, 1},   {GemvOp::kLinear, 4096, 2048, 1},
                              {GemvOp::kLinear, 32768, 1024, 1},  {GemvOp::kGrouped, 120, 3 * 1056, 3},
                              {GemvOp::kSwiglu, 4096, 4096, 2048}};
  const TestFormat formats[] = {TestFormat::kBF16, TestFormat::kFp8E8M0, TestFormat::kFp8F32, TestFormat::kMxfp4,
                                TestFormat::kNvfp4};
  const int64_t tokens[] = {1, 2, 3, 4, 8};
  constexpr int64_t kMaxT = 8;
  constexpr float kSwigluLimit = 7.0f;
  uint32_t seed = 9300;

  std::vector<std::unique_ptr<GemvWeight>> weights;
  std::vector<ops::DeviceBuffer> norm_w, n;  // per shape: [in] BF16, [kMaxT, in] BF16
  for (size_t si = 0; si < std::size(shapes); ++si) {
    const GemvShape& s = shapes[si];
    // Matrices of this shape: [rows, cols] each (swiglu: w1, w3 [I, D], w2 [D, I]).
    std::vector<std::pair<int64_t, int64_t>> mats;
    if (s.op == GemvOp::kSwiglu) {
      mats = {{s.groups, s.in}, {s.groups, s.in}, {s.in, s.groups}};
    } else {
      mats = {{s.out, s.in / s.groups}};
    }
    std::vector<std::vector<float>> wf;
    for (auto [r, k] : mats) wf.push_back(fast_normal(static_cast<size_t>(r * k), ++seed, 1.0f / 32));
    for (TestFormat f : formats) {
      if (s.op == GemvOp::kSwiglu && (f == TestFormat::kBF16 || f == TestFormat::kFp8F32)) continue;
      auto gw = std::make_unique<GemvWeight>();
      gw->shape = si;
      std::vector<std::future<std::unique_ptr<TestLinear>>> q;
      for (size_t m = 0; m < mats.size(); ++m)
        q.push_back(std::async(std::launch::async, [&, f, m] {
          return quantize_linear(f, wf[m], mats[m].first, mats[m].second,
                                 str_cat("pdl.gemv.", s.out, "x", s.in, ".", m, ".", format_label(f)));
        }));
      for (auto& fut : q) {
        gw->w.push_back(fut.get());
        upload_linear(*cuda, *gw->w.back());
      }
      if (s.op == GemvOp::kSwiglu) gw->expert = ExpertWeights{gw->w[0]->dev, gw->w[1]->dev, gw->w[2]->dev};
      weights.push_back(std::move(gw));
    }
    std::vector<float> nw = random_normal(static_cast<size_t>(s.in), ++seed, 0.1f);
    for (float& v : nw) v += 1.0f;
    norm_w.push_back(upload_f32(*cuda, nw, {s.in}, DType::kBF16));
    n.push_back(poisoned(*cuda, DType::kBF16, {kMaxT, s.in}));
  }
  std::vector<GemvStepCase> cases;
  for (size_t wi = 0; wi < weights.size(); ++wi)
    for (int64_t T : tokens) {
      const GemvShape& s = shapes[weights[wi]->shape];
      GemvStepCase c;
      c.weight = wi;
      c.T = T;
      c.h = ops::DeviceBuffer(*cuda, DType::kBF16, {T, s.in});
      c.y = poisoned(*cuda, DType::kF32, {T, s.out});
      cases.push_back(std::move(c));
    }

  // The step: per case, n = rms_norm(h) * w, then y = the projection of n.
  auto issue = [&] {
    const size_t mark = cuda->scratch_mark();
    for (GemvStepCase& c : cases) {
      const GemvWeight& gw = *weights[c.weight];
      const GemvShape& s = shapes[gw.shape];
      const TensorView nv = n[gw.shape].view().slice0(0, c.T), nw = norm_w[gw.shape].view();
      cuda->rms_norm(c.h.view(), &nw, kEps, nv);
      switch (s.op) {
        case GemvOp::kLinear: cuda->linear(nv, gw.w[0]->dev, c.y.view()); break;
        case GemvOp::kGrouped:
          cuda->grouped_linear(nv.reshaped({c.T, s.groups, s.in / s.groups}), gw.w[0]->dev, s.groups,
                               c.y.view().reshaped({c.T, s.groups, s.out / s.groups}));
          break;
        case GemvOp::kSwiglu: cuda->swiglu_mlp(nv, gw.expert, kSwigluLimit, c.y.view()); break;
      }
    }
    cuda->scratch_reset(mark);
  };
  auto upload_h = [&](const std::vector<std::vector<uint16_t>>& h) {
    for (size_t i = 0; i < cases.size(); ++i) cuda->upload(h[i].data(), cases[i].h.view());
  };
  auto poison_y = [&] {
    for (GemvStepCase& c : cases) cuda->fill(c.y.view(), std::nanf(""));
  };
  auto outputs = [&] {
    std::vector<std::vector<float>> y;
    for (GemvStepCase& c : cases) y.push_back(download_f32(*cuda, c.y.view()));
    return y;
  };
  auto label = [&](size_t i) { return str_cat(weights[cases[i].weight]->w[0]->host.name, " T=", cases[i].T); };

  // PDL on every launch: 0 auto (the default), 1 streaming, 2 streaming + L2 prefetch;
  // 3: auto with PDL on the GEMV launches alone.
  static const char* const kVariants[] = {"auto", "stream", "stream + L2 prefetch", "auto, PDL for GEMVs alone"};
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE(str_cat("variant ", kVariants[variant]));
    const bool stream = variant == 1 || variant == 2, gemv_only = variant == 3;
    backend::cuda::set_gemv_kernel(static_cast<backend::cuda::GemvKernel>(stream ? 2 : 3));  // kStream, kAuto
    backend::cuda::set_gemv_stream_l2_prefetch(variant == 2);
    auto set_pdl = [&](bool on) {
      backend::cuda::set_pdl_enabled_for_tests(on && !gemv_only);
      backend::cuda::set_gemv_pdl(on ? 1 : 0);
    };
    const uint64_t key = 0x9e3e0000u + static_cast<uint64_t>(variant);
    int replays = 0;
    for (int step = 0; step < 4; ++step) {
      SCOPED_TRACE(str_cat("step ", step));
      std::vector<std::vector<uint16_t>> h;
      for (const GemvStepCase& c : cases) {
        const std::vector<float> v = random_normal(static_cast<size_t>(c.h.view().numel()), ++seed);
        std::vector<uint16_t> bits(v.size());
        for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16(v[i]);
        h.push_back(std::move(bits));
      }
      // Reference: eager, PDL off.
      set_pdl(false);
      upload_h(h);
      poison_y();
      issue();
      const std::vector<std::vector<float>> ref = outputs();
      // Eager with PDL on.
      set_pdl(true);
      upload_h(h);
      poison_y();
      issue();
      const std::vector<std::vector<float>> eager_pdl = outputs();
      // The step graph recorded with PDL on (the backend's first steps run eagerly), fresh y.
      upload_h(h);
      poison_y();
      if (cuda->replay_step_graph(key)) {
        ++replays;
      } else {
        cuda->begin_step_graph(key);
        issue();
        cuda->end_step_graph();
      }
      const std::vector<std::vector<float>> graph_pdl = outputs();
      for (size_t i = 0; i < cases.size(); ++i) {
        double sq = 0;
        for (float v : ref[i]) sq += static_cast<double>(v) * v;
        EXPECT_TRUE(std::isfinite(sq) && sq > 0) << label(i) << ": PDL-off output not finite (poison left?) or zero";
        EXPECT_TRUE(same_bits(eager_pdl[i], ref[i])) << label(i) << ": eager, PDL on vs off";
        EXPECT_TRUE(same_bits(graph_pdl[i], ref[i])) << label(i) << ": step graph with PDL on vs eager off";
      }
    }
    EXPECT_GE(replays, 1) << "the step graph was never replayed";
  }
}

}  // namespace
}  // namespace clawmine::test
