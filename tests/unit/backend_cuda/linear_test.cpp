// CUDA linear and grouped_linear (backend/cuda/linear*.cu) against the CPU reference on the same
// fresh random inputs: every storage format (dense F32/BF16/F16, FP8 with E8M0 or F32 block
// scales, MXFP4, NVFP4) x T in {1, 4, 16, 77, 300} (GEMV tiles of 1..16 rows, 64-row GEMM
// tiles, partial tiles) x activations F32 (budget 1e-5: the --act-dtype f32 path) and BF16
// (1e-2), on small odd shapes (misaligned rows take the element-wise fallbacks, partial FP8
// scale blocks) and on V4-Flash's shapes (wq_a, wq_b, wkv, wo_b, expert w1/w2, the 129280-row
// BF16 head, wo_a as 8 groups); the policies W8A8 and W4A4 (static, dynamic, auto, trusted or
// not, saturating or not); prefill rows (256, 2048) through the BF16 weight copy and cuBLAS.
// Outputs are poisoned with NaN first; NaN never passes. The streaming decode GEMV
// (CLAWMINE_GEMV=stream) is checked on its own at T in {1, 2, 3, 4, 8}: BF16, FP8 (E8M0 and F32
// scales), MXFP4 and NVFP4, rows not a multiple of its 16-row tile, k not a multiple of its
// split, thread-block clusters with empty k segments, grouped problems. Skips without a GPU.
#include <cmath>
#include <cstdint>
#include <future>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/op_errors.h"
#include "core/error.h"
#include "unit/backend_cuda/linear_test_util.h"
#include "unit/backend_cuda/same_inputs.h"

// linear_kernels.cuh (a CUDA header) declares these; the GEMV kernel choice for tests.
namespace clawmine::backend::cuda {
enum class GemvKernel : int32_t;
void set_gemv_kernel(GemvKernel k);
void set_gemv_stream_mtiles(int n);
void set_gemv_wgmma(int on);
void set_gemv_wgmma_shallow(int on);
}  // namespace clawmine::backend::cuda

namespace clawmine::test {
namespace {

// Decode sizes, GEMV tiles of prefill sizes with BF16 activations (48, 64: up to linear.cu's
// kGemvMaxRows; F32 ones, also after W8A8/W4A4's transform, run the tiled GEMMs past 32), then the
// BF16 copy and cuBLAS (BF16 activations) or the tiled GEMMs.
constexpr int64_t kTokens[] = {1, 4, 16, 48, 64, 77, 300};
constexpr DType kActs[] = {DType::kF32, DType::kBF16};

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

class CudaLinear : public GpuTest {
 protected:
  // linear on both backends for x [T, in] in dtype act; checks the row windows of the output
  // (every row when the weight is small) and that no poisoned value is left anywhere.
  void check_linear(TestLinear& w, int64_t T, DType act, uint32_t seed) {
    const int64_t O = w.host.out_features, I = w.host.in_features;
    SCOPED_TRACE(w.host.name + " [" + std::to_string(O) + ", " + std::to_string(I) + "] T=" + std::to_string(T) +
                 " act=" + dtype_label(act));
    TestActs x = make_acts(*cuda, {T, I}, act, seed);
    const ops::DeviceBuffer out = poisoned(*cuda, act, {T, O});
    cuda->linear(x.dev.view(), w.dev, out.view());
    const std::vector<float> got = download_f32(*cuda, out.view());
    const auto windows = check_windows(O);
    const std::vector<float> ref = cpu_linear_windows(*cpu, x, T, w.host, windows);
    EXPECT_TRUE(within(gather_windows(got, T, O, windows), ref, act_budget(act)));
    EXPECT_TRUE(all_finite(got)) << "an output was left unwritten (NaN poison) or overflowed";
  }
};

TEST_F(CudaLinear, EveryFormatOnSmallOddShapes) {
  // [out, in]: odd row counts; in = 77 (F32/BF16/F16/FP8 rows not 16-byte aligned: element-wise
  // paths), 80 (NVFP4 rows of 40 bytes), 96, 160 (aligned FP4), 272 (FP8: a partial 128-block).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{37, 77}, {37, 80}, {37, 96}, {131, 96}, {130, 272},
                                                           {131, 160}};
  uint32_t seed = 100;
  for (TestFormat f : kAllFormats) {
    for (auto [O, I] : shapes) {
      if (!format_accepts(f, I)) continue;
      const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), ++seed, 0.1f);
      auto w = make_linear(*cuda, f, wf, O, I, std::string("small.") + format_label(f));
      for (int64_t T : kTokens)
        for (DType act : kActs) check_linear(*w, T, act, ++seed);
    }
  }
}

TEST_F(CudaLinear, EveryFormatOnV4FlashShapes) {
  struct Shape2 {
    const char* name;
    int64_t out, in;
  };
  const Shape2 shapes[] = {{"attn.wq_a", 1024, 4096}, {"attn.wq_b", 32768, 1024}, {"attn.wkv", 512, 4096},
                           {"attn.wo_b", 4096, 8192}, {"ffn.experts.w1", 2048, 4096}, {"ffn.experts.w2", 4096, 2048}};
  uint32_t seed = 200;
  for (const Shape2& s : shapes) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(s.out * s.in), ++seed, 1.0f / 64);
    // Quantize every format at once on the host; upload and test one at a time.
    std::vector<std::future<std::unique_ptr<TestLinear>>> q;
    for (TestFormat f : kAllFormats)
      q.push_back(std::async(std::launch::async, [&, f] {
        return quantize_linear(f, wf, s.out, s.in, std::string(s.name) + "." + format_label(f));
      }));
    for (auto& fut : q) {
      std::unique_ptr<TestLinear> w = fut.get();
      upload_linear(*cuda, *w);
      for (int64_t T : kTokens)
        for (DType act : kActs) check_linear(*w, T, act, ++seed);
    }
  }
}

TEST_F(CudaLinear, HeadDenseBf16AtV4FlashVocabulary) {
  // head [129280, 4096] BF16: the GEMV at T = 1 (decode) and cuBLAS / FMA at T = 77.
  const int64_t V = 129280, D = 4096;
  TestLinear w;
  w.host.name = "head";
  w.host.out_features = V;
  w.host.in_features = D;
  w.w_bytes.resize(static_cast<size_t>(V * D) * 2);
  {
    std::vector<std::thread> th;
    for (int p = 0; p < 16; ++p)
      th.emplace_back([&, p] {
        std::mt19937 rng(4242u + p);
        std::normal_distribution<float> dist(0.0f, 1.0f / 64);
        const size_t n = static_cast<size_t>(V * D), b = n * p / 16, e = n * (p + 1) / 16;
        uint16_t* out = reinterpret_cast<uint16_t*>(w.w_bytes.data());
        for (size_t i = b; i < e; ++i) out[i] = f32_to_bf16(dist(rng));
      });
    for (auto& t : th) t.join();
  }
  w.host.weight = TensorView{DType::kBF16, Device::kCpu, {V, D}, w.w_bytes.data()};
  upload_linear(*cuda, w);
  uint32_t seed = 300;
  for (int64_t T : {int64_t{1}, int64_t{77}})
    for (DType act : kActs) check_linear(w, T, act, ++seed);
}

TEST_F(CudaLinear, GroupedLinearEveryFormat) {
  // out[t, g, :] = W[g*Lo:(g+1)*Lo] @ x[t, g, :]: small odd groups, then wo_a's 8 x 1024 x 4096.
  struct Case {
    int64_t G, Lo, In;
    std::vector<int64_t> tokens;
  };
  const Case cases[] = {{3, 40, 64, {1, 4, 16, 64, 77, 300}}, {3, 37, 72, {1, 16, 64, 77}}, {8, 1024, 4096, {1, 16, 64, 77}}};
  uint32_t seed = 400;
  for (const Case& c : cases) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(c.G * c.Lo * c.In), ++seed, 1.0f / 64);
    for (TestFormat f : kAllFormats) {
      if (!format_accepts(f, c.In)) continue;
      auto w = make_linear(*cuda, f, wf, c.G * c.Lo, c.In, std::string("attn.wo_a.") + format_label(f));
      for (int64_t T : c.tokens)
        for (DType act : kActs) {
          SCOPED_TRACE(w->host.name + " G=" + std::to_string(c.G) + " Lo=" + std::to_string(c.Lo) +
                       " in_g=" + std::to_string(c.In) + " T=" + std::to_string(T) + " act=" + dtype_label(act));
          TestActs x = make_acts(*cuda, {T, c.G, c.In}, act, ++seed);
          const ops::DeviceBuffer out = poisoned(*cuda, act, {T, c.G, c.Lo});
          cuda->grouped_linear(x.dev.view(), w->dev, c.G, out.view());
          std::vector<float> ref(static_cast<size_t>(T * c.G * c.Lo), std::nanf(""));
          cpu->grouped_linear(x.host_view({T, c.G, c.In}), w->host, c.G,
                              TensorView{DType::kF32, Device::kCpu, {T, c.G, c.Lo}, ref.data()});
          EXPECT_TRUE(within(download_f32(*cuda, out.view()), ref, act_budget(act)));
        }
    }
  }
}

// ---- prefill: the exact BF16 copy of the weight and cuBLAS (linear_dequant.cu) ----------------

// Rows >= kDequantMinRows (128) with BF16 activations: FP8-E8M0, MXFP4 and NVFP4 weights are
// decoded to a BF16 scratch copy and multiplied by cuBLAS (NVFP4's weight_scale_2 as alpha);
// dense BF16 stays on cuBLAS straight from the weight. Checked against the CPU reference at 256
// and 2048 rows, BF16 and F32 outputs, plain and grouped.
TEST_F(CudaLinear, PrefillRowsThroughBf16CopyAndCublas) {
  const int64_t O = 640, I = 1024;  // every output row checked (check_windows)
  const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), 1000, 1.0f / 32);
  uint32_t seed = 1001;
  for (TestFormat f : {TestFormat::kFp8E8M0, TestFormat::kMxfp4, TestFormat::kNvfp4, TestFormat::kBF16}) {
    auto w = make_linear(*cuda, f, wf, O, I, std::string("prefill.") + format_label(f));
    if (f == TestFormat::kNvfp4) {
      EXPECT_NE(w->scale2, 1.0f) << "the test needs a global scale that is not 1 (alpha path)";
    }
    for (int64_t T : {int64_t{256}, int64_t{2048}}) {
      check_linear(*w, T, DType::kBF16, ++seed);
      // BF16 x, F32 out (cuBLAS writes CUDA_R_32F).
      SCOPED_TRACE(w->host.name + " T=" + std::to_string(T) + " out=F32");
      TestActs x = make_acts(*cuda, {T, I}, DType::kBF16, ++seed);
      const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {T, O});
      cuda->linear(x.dev.view(), w->dev, out.view());
      const std::vector<float> got = download_f32(*cuda, out.view());
      EXPECT_TRUE(within(got, cpu_linear_windows(*cpu, x, T, w->host, {{0, O}}), kBf16Budget));
      EXPECT_TRUE(all_finite(got));
    }
  }
}

TEST_F(CudaLinear, PrefillGroupedLinearThroughBf16CopyAndCublas) {
  // 4 groups of [160 x 256]: one BF16 copy of the whole weight, strided batched cuBLAS.
  const int64_t G = 4, Lo = 160, In = 256;
  const std::vector<float> wf = fast_normal(static_cast<size_t>(G * Lo * In), 1100, 1.0f / 16);
  uint32_t seed = 1101;
  for (TestFormat f : {TestFormat::kFp8E8M0, TestFormat::kMxfp4, TestFormat::kNvfp4, TestFormat::kBF16}) {
    auto w = make_linear(*cuda, f, wf, G * Lo, In, std::string("prefill.wo_a.") + format_label(f));
    for (int64_t T : {int64_t{256}, int64_t{2048}}) {
      SCOPED_TRACE(w->host.name + " T=" + std::to_string(T));
      TestActs x = make_acts(*cuda, {T, G, In}, DType::kBF16, ++seed);
      const ops::DeviceBuffer out = poisoned(*cuda, DType::kBF16, {T, G, Lo});
      cuda->grouped_linear(x.dev.view(), w->dev, G, out.view());
      std::vector<float> ref(static_cast<size_t>(T * G * Lo), std::nanf(""));
      cpu->grouped_linear(x.host_view({T, G, In}), w->host, G,
                          TensorView{DType::kF32, Device::kCpu, {T, G, Lo}, ref.data()});
      const std::vector<float> got = download_f32(*cuda, out.view());
      EXPECT_TRUE(within(got, ref, kBf16Budget));
      EXPECT_TRUE(all_finite(got));
    }
  }
}

// ---- policies ---------------------------------------------------------------------------------

class CudaLinearPolicy : public CudaLinear {
 protected:
  void set_policy(const ops::LinearPolicy& p) {
    cpu->set_linear_policy(p);
    cuda->set_linear_policy(p);
  }
};

TEST_F(CudaLinearPolicy, W8A8QuantizesActivationsOfFp8AndMxfp4Weights) {
  ops::LinearPolicy p;
  p.fp8 = ops::Fp8Path::kW8A8;
  set_policy(p);
  // Dense and NVFP4 weights are untouched by W8A8; FP8 (both scale dtypes) and MXFP4 quantize
  // x per token per 128 (the last block of in = 272 or 77 is partial).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{131, 272}, {37, 77}, {1024, 4096}};
  uint32_t seed = 500;
  for (auto [O, I] : shapes) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), ++seed, 1.0f / 32);
    for (TestFormat f : {TestFormat::kFp8E8M0, TestFormat::kFp8F32, TestFormat::kMxfp4, TestFormat::kBF16}) {
      if (!format_accepts(f, I)) continue;
      auto w = make_linear(*cuda, f, wf, O, I, std::string("w8a8.") + format_label(f));
      for (int64_t T : kTokens)
        for (DType act : kActs) check_linear(*w, T, act, ++seed);
    }
  }
}

TEST_F(CudaLinearPolicy, W4A4StaticDynamicAutoOnNvfp4) {
  // x ~ N(0, 1): amax about 4.5 per token at in = 4096, so input_scale = 4/2688 is a realistic
  // static scale (some blocks saturate, as calibrated scales do).
  struct ScaleCase {
    const char* label;
    ops::ActScale mode;
    std::optional<float> input_scale;
    bool trusted;
  };
  const ScaleCase scales[] = {
      {"static", ops::ActScale::kStatic, 4.0f / 2688, true},
      {"dynamic", ops::ActScale::kDynamic, 4.0f / 2688, true},
      {"auto-trusted", ops::ActScale::kAuto, 4.0f / 2688, true},     // static
      {"auto-untrusted", ops::ActScale::kAuto, 4.0f / 2688, false},  // dynamic
      {"auto-no-scale", ops::ActScale::kAuto, std::nullopt, true},   // dynamic
      {"auto-zero-scale", ops::ActScale::kAuto, 0.0f, true},         // invalid: dynamic
  };
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{131, 96}, {37, 80}, {2048, 4096}};
  uint32_t seed = 600;
  for (auto [O, I] : shapes) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), ++seed, 1.0f / 32);
    for (const ScaleCase& sc : scales) {
      ops::LinearPolicy p;
      p.nvfp4 = ops::Nvfp4Path::kW4A4;
      p.act_scale = sc.mode;
      set_policy(p);
      auto w = make_linear(*cuda, TestFormat::kNvfp4, wf, O, I, std::string("w4a4.") + sc.label, sc.input_scale,
                           sc.trusted);
      for (int64_t T : kTokens)
        for (DType act : kActs) check_linear(*w, T, act, ++seed);
    }
  }
}

TEST_F(CudaLinearPolicy, W4A4WithoutSaturationGivesTheSameNaNAsTheCpu) {
  // A tiny static input_scale makes g * amax16 / 6 far above 448: saturating, every block
  // clamps (finite, equal on both); without saturation every block's scale is NaN, on both.
  const int64_t O = 131, I = 96;
  const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), 700, 0.1f);
  auto w = make_linear(*cuda, TestFormat::kNvfp4, wf, O, I, "w4a4.tiny_scale", 1e-30f, true);
  for (bool saturate : {true, false}) {
    ops::LinearPolicy p;
    p.nvfp4 = ops::Nvfp4Path::kW4A4;
    p.act_scale = ops::ActScale::kStatic;
    p.saturate = saturate;
    set_policy(p);
    for (DType act : kActs) {
      for (int64_t T : {int64_t{1}, int64_t{77}}) {
        SCOPED_TRACE(std::string("saturate=") + (saturate ? "on" : "off") + " T=" + std::to_string(T) +
                     " act=" + dtype_label(act));
        TestActs x = make_acts(*cuda, {T, I}, act, 701);
        const ops::DeviceBuffer out = poisoned(*cuda, act, {T, O});
        cuda->linear(x.dev.view(), w->dev, out.view());
        const std::vector<float> got = download_f32(*cuda, out.view());
        const std::vector<float> ref = cpu_linear_windows(*cpu, x, T, w->host, {{0, O}});
        size_t ref_nan = 0;
        for (float v : ref) ref_nan += std::isnan(v);
        if (saturate) {
          EXPECT_EQ(ref_nan, 0u);
          EXPECT_TRUE(within(got, ref, act_budget(act)));
        } else {
          EXPECT_EQ(ref_nan, ref.size()) << "the CPU reference should be NaN everywhere";
          size_t got_nan = 0;
          for (float v : got) got_nan += std::isnan(v);
          EXPECT_EQ(got_nan, got.size());
        }
      }
    }
  }
}

TEST_F(CudaLinearPolicy, StaticScaleErrorsMatchTheCpu) {
  const int64_t O = 37, I = 96;
  const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), 800, 0.1f);
  ops::LinearPolicy p;
  p.nvfp4 = ops::Nvfp4Path::kW4A4;
  p.act_scale = ops::ActScale::kStatic;
  set_policy(p);
  TestActs x = make_acts(*cuda, {4, I}, DType::kF32, 801);
  const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {4, O});
  std::vector<float> ref(static_cast<size_t>(4 * O));
  const TensorView ref_view{DType::kF32, Device::kCpu, {4, O}, ref.data()};
  {
    // No input_scale: an Error naming the weight on both, at the call.
    auto w = make_linear(*cuda, TestFormat::kNvfp4, wf, O, I, "layers.9.attn.wq_a");
    EXPECT_THROW(cpu->linear(x.host_view({4, I}), w->host, ref_view), Error);
    try {
      cuda->linear(x.dev.view(), w->dev, out.view());
      ADD_FAILURE() << "cuda linear accepted --act-scale static without input_scale";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("layers.9.attn.wq_a"), std::string::npos) << e.what();
    }
  }
  {
    // A negative input_scale: the CPU throws at the call; the device value is only seen by the
    // kernel, which writes NaN and records an op error (op_errors.h) reported once.
    auto w = make_linear(*cuda, TestFormat::kNvfp4, wf, O, I, "layers.9.attn.wq_b", -1.0f);
    EXPECT_THROW(cpu->linear(x.host_view({4, I}), w->host, ref_view), Error);
    cuda->linear(x.dev.view(), w->dev, out.view());
    try {
      backend::cuda::check_op_errors(*cuda);
      ADD_FAILURE() << "the kernel's op error was not reported";
    } catch (const Error& e) {  // names the flag and the value
      const std::string m = e.what();
      EXPECT_NE(m.find("--act-scale static"), std::string::npos) << m;
      EXPECT_NE(m.find("input_scale"), std::string::npos) << m;
      EXPECT_NE(m.find("is -1"), std::string::npos) << m;
    }
    for (float v : download_f32(*cuda, out.view())) EXPECT_TRUE(std::isnan(v));
  }
}

TEST_F(CudaLinear, HostWeightIsAnErrorNamingIt) {
  const std::vector<float> wf = fast_normal(37 * 64, 900, 0.1f);
  auto w = make_linear(*cuda, TestFormat::kBF16, wf, 37, 64, "layers.0.ffn.shared_experts.w1");
  TestActs x = make_acts(*cuda, {2, 64}, DType::kF32, 901);
  const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {2, 37});
  try {
    cuda->linear(x.dev.view(), w->host, out.view());
    ADD_FAILURE() << "cuda linear accepted a host weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.ffn.shared_experts.w1"), std::string::npos) << e.what();
  }
}

// ---- the streaming decode GEMV (linear_gemv.cu, gemv_stream) --------------------------------

// Every GEMV launch of these tests takes the streaming kernel where it applies (BF16
// activations, tiles of <= 16 tokens); the default choice comes back afterwards.
class CudaLinearStream : public CudaLinear {
 protected:
  void SetUp() override {
    CudaLinear::SetUp();
    if (IsSkipped()) return;
    backend::cuda::set_gemv_kernel(static_cast<backend::cuda::GemvKernel>(2));  // kStream
  }
  void TearDown() override {
    if (cuda) backend::cuda::set_gemv_kernel(static_cast<backend::cuda::GemvKernel>(0));  // kDefault
    CudaLinear::TearDown();
  }
};

constexpr TestFormat kStreamFormats[] = {TestFormat::kBF16, TestFormat::kFp8E8M0, TestFormat::kFp8F32,
                                         TestFormat::kMxfp4, TestFormat::kNvfp4};
// 1-8 tokens: one n tile of the streaming GEMV; 12 and 16: two (kN = 2, no clusters).
constexpr int64_t kStreamTokens[] = {1, 2, 3, 4, 8, 12, 16};

TEST_F(CudaLinearStream, EveryFormatAtDecodeShapes) {
  // [out, in]: 131 x 1056 (a partial 16-row tile; k blocks of 64 bytes: FP8 66 chunks = 16.5,
  // FP4 33 = 8.25, BF16 132 = 33; FP8 scale blocks partial in both directions); 40 x 4128 (3
  // m-tiles: split 64 ways over clusters of 4 blocks, some k segments and the last block empty);
  // wkv 512 x 4096 (clusters of 4), wq_a 1024 x 4096 (clusters of 2), indexer wq_b 8192 x 1024
  // (4 warps per m-tile), w2 4096 x 2048 (8 warps).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{131, 1056}, {40, 4128}, {512, 4096},
                                                           {1024, 4096}, {8192, 1024}, {4096, 2048}};
  uint32_t seed = 1200;
  for (auto [O, I] : shapes) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), ++seed, 1.0f / 32);
    std::vector<std::future<std::unique_ptr<TestLinear>>> q;
    for (TestFormat f : kStreamFormats)
      q.push_back(std::async(std::launch::async, [&, f] {
        return quantize_linear(f, wf, O, I, std::string("stream.") + format_label(f));
      }));
    for (auto& fut : q) {
      std::unique_ptr<TestLinear> w = fut.get();
      upload_linear(*cuda, *w);
      for (int64_t T : kStreamTokens) check_linear(*w, T, DType::kBF16, ++seed);
      // F32 output, and the same call twice gives the same bits (fixed-order split-k sums).
      SCOPED_TRACE(w->host.name + " [" + std::to_string(O) + ", " + std::to_string(I) + "] out=F32");
      for (int64_t T : {int64_t{1}, int64_t{4}, int64_t{16}}) {
        TestActs x = make_acts(*cuda, {T, I}, DType::kBF16, ++seed);
        const ops::DeviceBuffer a = poisoned(*cuda, DType::kF32, {T, O}), b = poisoned(*cuda, DType::kF32, {T, O});
        cuda->linear(x.dev.view(), w->dev, a.view());
        cuda->linear(x.dev.view(), w->dev, b.view());
        const std::vector<float> ga = download_f32(*cuda, a.view()), gb = download_f32(*cuda, b.view());
        const auto windows = check_windows(O);
        EXPECT_TRUE(within(gather_windows(ga, T, O, windows), cpu_linear_windows(*cpu, x, T, w->host, windows),
                           kBf16Budget))
            << "T=" << T;
        EXPECT_TRUE(all_finite(ga)) << "T=" << T;
        EXPECT_TRUE(same_bits(ga, gb)) << "T=" << T;
      }
    }
  }
}

TEST_F(CudaLinearStream, GroupedLinear) {
  // Problems along grid z: odd groups (a group's rows start mid 16-row tile and mid 128-row FP8
  // scale block), and wo_a's 8 x 1024 x 4096.
  struct Case {
    int64_t G, Lo, In;
  };
  const Case cases[] = {{3, 40, 1056}, {3, 37, 4096}, {8, 1024, 4096}};
  uint32_t seed = 1300;
  for (const Case& c : cases) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(c.G * c.Lo * c.In), ++seed, 1.0f / 32);
    for (TestFormat f : kStreamFormats) {
      auto w = make_linear(*cuda, f, wf, c.G * c.Lo, c.In, std::string("stream.wo_a.") + format_label(f));
      for (int64_t T : kStreamTokens) {
        SCOPED_TRACE(w->host.name + " G=" + std::to_string(c.G) + " Lo=" + std::to_string(c.Lo) +
                     " in_g=" + std::to_string(c.In) + " T=" + std::to_string(T));
        TestActs x = make_acts(*cuda, {T, c.G, c.In}, DType::kBF16, ++seed);
        const ops::DeviceBuffer out = poisoned(*cuda, DType::kBF16, {T, c.G, c.Lo});
        cuda->grouped_linear(x.dev.view(), w->dev, c.G, out.view());
        std::vector<float> ref(static_cast<size_t>(T * c.G * c.Lo), std::nanf(""));
        cpu->grouped_linear(x.host_view({T, c.G, c.In}), w->host, c.G,
                            TensorView{DType::kF32, Device::kCpu, {T, c.G, c.Lo}, ref.data()});
        const std::vector<float> got = download_f32(*cuda, out.view());
        EXPECT_TRUE(within(got, ref, kBf16Budget));
        EXPECT_TRUE(all_finite(got));
      }
    }
  }
}

TEST_F(CudaLinearStream, SeveralMtilesPerBlockGiveTheBitsOfOne) {
  // m-tiles sharing a block (and its staged activations): the same per-warp work and the same
  // fixed-order sums as one m-tile per block, so the same bits; rows 131 and 40 leave the last
  // block's later m-tiles past the end (computed, never stored); against the CPU as well.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{131, 1056}, {40, 4128}, {4096, 2048}};
  uint32_t seed = 1500;
  for (auto [O, I] : shapes) {
    const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), ++seed, 1.0f / 32);
    for (TestFormat f : kStreamFormats) {
      auto w = make_linear(*cuda, f, wf, O, I, std::string("stream.mt.") + format_label(f));
      for (int64_t T : kStreamTokens) {
        SCOPED_TRACE(w->host.name + " [" + std::to_string(O) + ", " + std::to_string(I) + "] T=" + std::to_string(T));
        TestActs x = make_acts(*cuda, {T, I}, DType::kBF16, ++seed);
        std::vector<std::vector<float>> outs;
        for (int mt : {1, 4, 16}) {
          backend::cuda::set_gemv_stream_mtiles(mt);
          const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {T, O});
          cuda->linear(x.dev.view(), w->dev, out.view());
          outs.push_back(download_f32(*cuda, out.view()));
        }
        backend::cuda::set_gemv_stream_mtiles(0);
        EXPECT_TRUE(same_bits(outs[1], outs[0])) << "4 m-tiles per block";
        EXPECT_TRUE(same_bits(outs[2], outs[0])) << "16 m-tiles per block (or as many as fit 16 warps)";
        EXPECT_TRUE(all_finite(outs[1]));
        const auto windows = check_windows(O);
        EXPECT_TRUE(within(gather_windows(outs[1], T, O, windows), cpu_linear_windows(*cpu, x, T, w->host, windows),
                           kBf16Budget));
      }
    }
  }
}

TEST_F(CudaLinearStream, Mxfp4ScalesAboveTwoTakeTheTwoMultiplyDecode) {
  // MXFP4 k blocks whose E8M0 scales are all <= 2 decode with one bf16 multiply; a block with a
  // larger scale (weights ~ N(0, 64^2): scales about 2^5) takes the exact two-step decode. Rows
  // 0..47 (m-tiles 0-2) are large, 48..95 not, so warps of one launch take either branch; each
  // half is compared on its own (the large half would hide errors of the small one).
  const int64_t O = 96, I = 2048, big = 48;
  std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), 1400, 1.0f / 32);
  for (int64_t i = 0; i < big * I; ++i) wf[i] *= 2048.0f;
  auto w = make_linear(*cuda, TestFormat::kMxfp4, wf, O, I, "stream.mxfp4_big_scales");
  uint32_t seed = 1401;
  for (int64_t T : kStreamTokens) {
    SCOPED_TRACE("T=" + std::to_string(T));
    TestActs x = make_acts(*cuda, {T, I}, DType::kBF16, ++seed);
    const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {T, O});
    cuda->linear(x.dev.view(), w->dev, out.view());
    const std::vector<float> got = download_f32(*cuda, out.view());
    EXPECT_TRUE(all_finite(got));
    for (const std::pair<int64_t, int64_t> half : {std::pair<int64_t, int64_t>{0, big}, {big, O}}) {
      const std::vector<std::pair<int64_t, int64_t>> win = {half};
      EXPECT_TRUE(within(gather_windows(got, T, O, win), cpu_linear_windows(*cpu, x, T, w->host, win), kBf16Budget))
          << "rows " << half.first << ".." << half.second;
    }
  }
}

TEST_F(CudaLinear, RepeatedCallsAreBitIdentical) {
  // Deterministic reductions (no atomics): the same call twice gives the same bits, GEMV and GEMM.
  const std::vector<float> wf = fast_normal(1024 * 4096, 950, 1.0f / 64);
  auto w = make_linear(*cuda, TestFormat::kFp8E8M0, wf, 1024, 4096, "attn.wq_a");
  for (int64_t T : {int64_t{4}, int64_t{300}}) {
    TestActs x = make_acts(*cuda, {T, 4096}, DType::kBF16, 951);
    const ops::DeviceBuffer a = poisoned(*cuda, DType::kBF16, {T, 1024}), b = poisoned(*cuda, DType::kBF16, {T, 1024});
    cuda->linear(x.dev.view(), w->dev, a.view());
    cuda->linear(x.dev.view(), w->dev, b.view());
    EXPECT_TRUE(same_bits(download_f32(*cuda, a.view()), download_f32(*cuda, b.view()))) << "T=" << T;
  }
}

// ---- the one-token FP8 GEMV on wgmma (linear_gemv_wgmma.cu) ---------------------------------

// launch_gemv takes it for dense FP8 at one token with >= 16 MiB of weights (sm_90a builds on a
// Hopper GPU; elsewhere these check the streaming kernel). The shapes cover its (k blocks per
// warpgroup, split) choices: 16384 x 1024 (4, 2), 8192 x 2048 (4, 4), 4096 x 4096 (4, 8),
// 32768 x 1024 (8, 1: wq_b), 4096 x 8192 (8, 8: wo_b), 2048 x 16384 (16, 8), and wo_a's grouped
// 8 x 1024 x 4096 (8, 4). Against the CPU, outputs F32 and BF16, the same bits twice (fixed-order
// split sums), and different bits from the streaming kernel (so the wgmma kernel did run).
class CudaLinearWgmma : public CudaLinear {
 protected:
  void TearDown() override {
    if (cuda) {
      backend::cuda::set_gemv_wgmma(-1);
      backend::cuda::set_gemv_wgmma_shallow(-1);
    }
    CudaLinear::TearDown();
  }
  // Shapes at one token on the wgmma GEMV (set_gemv_wgmma(level)) in each format: against the
  // CPU, finite, the same bits twice, the streaming kernel's values (wgmma off); FP8 also through
  // check_linear. Without sm_90a or a Hopper GPU every launch streams (then a note says so).
  void check_shapes(const std::vector<std::pair<int64_t, int64_t>>& shapes, std::initializer_list<TestFormat> formats,
                    int level, uint32_t seed) {
    bool any_differs = false;
    for (auto [O, I] : shapes) {
      const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), ++seed, 1.0f / 32);
      for (TestFormat f : formats) {
        auto w = make_linear(*cuda, f, wf, O, I, std::string("wgmma.") + format_label(f));
        SCOPED_TRACE(w->host.name + " [" + std::to_string(O) + ", " + std::to_string(I) + "]");
        backend::cuda::set_gemv_wgmma(level);
        if (f == TestFormat::kFp8E8M0 || f == TestFormat::kFp8F32) check_linear(*w, 1, DType::kBF16, ++seed);
        TestActs x = make_acts(*cuda, {1, I}, DType::kBF16, ++seed);
        const ops::DeviceBuffer a = poisoned(*cuda, DType::kF32, {1, O}), b = poisoned(*cuda, DType::kF32, {1, O}),
                                c = poisoned(*cuda, DType::kF32, {1, O});
        cuda->linear(x.dev.view(), w->dev, a.view());
        cuda->linear(x.dev.view(), w->dev, b.view());
        backend::cuda::set_gemv_wgmma(0);
        cuda->linear(x.dev.view(), w->dev, c.view());
        const std::vector<float> ga = download_f32(*cuda, a.view()), gb = download_f32(*cuda, b.view()),
                                 gc = download_f32(*cuda, c.view());
        const auto windows = check_windows(O);
        EXPECT_TRUE(within(gather_windows(ga, 1, O, windows), cpu_linear_windows(*cpu, x, 1, w->host, windows),
                           kBf16Budget));
        EXPECT_TRUE(all_finite(ga));
        EXPECT_TRUE(same_bits(ga, gb));
        EXPECT_TRUE(within(ga, gc, kBf16Budget));
        any_differs = any_differs || !same_bits(ga, gc);
      }
    }
    if (!any_differs) std::printf("[ note ] the wgmma GEMV did not run here (not an sm_90a build on Hopper)\n");
  }
};

TEST_F(CudaLinearWgmma, Fp8AtOneTokenMatchesTheCpu) {
  check_shapes({{16384, 1024}, {8192, 2048}, {4096, 4096}, {32768, 1024}, {4096, 8192}, {2048, 16384}},
               {TestFormat::kFp8E8M0, TestFormat::kFp8F32}, 1, 2500);
}

// The unsplit FP8 launch (wq_b's 32768 x 1024) takes 2 register stages by default and 4 (the
// other launches' depth) with CLAWMINE_GEMV_WGMMA_SHALLOW=0: the same products summed in the same
// order, so the same bits, and both against the CPU.
TEST_F(CudaLinearWgmma, Fp8UnsplitAtEitherDepth) {
  const int64_t O = 32768, I = 1024;
  const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), 2550, 1.0f / 32);
  for (TestFormat f : {TestFormat::kFp8E8M0, TestFormat::kFp8F32}) {
    auto w = make_linear(*cuda, f, wf, O, I, std::string("wgmma.depth.") + format_label(f));
    SCOPED_TRACE(w->host.name);
    TestActs x = make_acts(*cuda, {1, I}, DType::kBF16, 2551);
    const ops::DeviceBuffer a = poisoned(*cuda, DType::kF32, {1, O}), b = poisoned(*cuda, DType::kF32, {1, O});
    backend::cuda::set_gemv_wgmma(1);
    backend::cuda::set_gemv_wgmma_shallow(1);
    cuda->linear(x.dev.view(), w->dev, a.view());
    backend::cuda::set_gemv_wgmma_shallow(0);
    cuda->linear(x.dev.view(), w->dev, b.view());
    const std::vector<float> ga = download_f32(*cuda, a.view()), gb = download_f32(*cuda, b.view());
    const auto windows = check_windows(O);
    EXPECT_TRUE(all_finite(ga));
    EXPECT_TRUE(within(gather_windows(ga, 1, O, windows), cpu_linear_windows(*cpu, x, 1, w->host, windows),
                       kBf16Budget));
    EXPECT_TRUE(same_bits(ga, gb));
  }
}

// FP4 weights (MXFP4: E8M0 per 32; NVFP4: E4M3 per 16 and the global scale, two accumulator sets
// per k block), which the wgmma GEMV takes for dense launches only at level 3
// (CLAWMINE_GEMV_WGMMA_EXPERTS=1; level 2, the default, adds the experts' FP4 down projections
// alone, so at level 2 this test checked the streaming kernel): every (k blocks, split) choice of
// FP4 at 16 MiB.
TEST_F(CudaLinearWgmma, Fp4AtOneTokenMatchesTheCpu) {
  check_shapes({{32768, 1024}, {8192, 4096}, {4096, 8192}, {2048, 16384}}, {TestFormat::kMxfp4, TestFormat::kNvfp4}, 3,
               2900);
}

TEST_F(CudaLinearWgmma, GroupedWoA) {
  const int64_t G = 8, Lo = 1024, In = 4096;
  const std::vector<float> wf = fast_normal(static_cast<size_t>(G * Lo * In), 2600, 1.0f / 32);
  auto w = make_linear(*cuda, TestFormat::kFp8E8M0, wf, G * Lo, In, "wgmma.wo_a");
  backend::cuda::set_gemv_wgmma(1);
  TestActs x = make_acts(*cuda, {1, G, In}, DType::kBF16, 2601);
  const ops::DeviceBuffer out = poisoned(*cuda, DType::kBF16, {1, G, Lo});
  cuda->grouped_linear(x.dev.view(), w->dev, G, out.view());
  std::vector<float> ref(static_cast<size_t>(G * Lo), std::nanf(""));
  cpu->grouped_linear(x.host_view({1, G, In}), w->host, G, TensorView{DType::kF32, Device::kCpu, {1, G, Lo}, ref.data()});
  const std::vector<float> got = download_f32(*cuda, out.view());
  EXPECT_TRUE(within(got, ref, kBf16Budget));
  EXPECT_TRUE(all_finite(got));
}

TEST_F(CudaLinearWgmma, ActivationsOverAWideRangeAndNonFinite) {
  // Activations from 2^-40 to 2^40 (each 32-element chunk staged with its own power of two):
  // within the budget of the CPU; one NaN or inf makes every output non-finite, as on the CPU.
  const int64_t O = 4096, I = 8192;
  const std::vector<float> wf = fast_normal(static_cast<size_t>(O * I), 2700, 1.0f / 32);
  auto w = make_linear(*cuda, TestFormat::kFp8E8M0, wf, O, I, "wgmma.range");
  backend::cuda::set_gemv_wgmma(1);
  TestActs x = make_acts(*cuda, {1, I}, DType::kBF16, 2701);
  for (int64_t k = 0; k < I; ++k)
    x.host[k] = bf16_to_f32(f32_to_bf16(std::ldexp(x.host[k], static_cast<int>((k / 32) % 81) - 40)));
  x.dev = upload_f32(*cuda, x.host, {1, I}, DType::kBF16);
  const auto windows = check_windows(O);
  {
    const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {1, O});
    cuda->linear(x.dev.view(), w->dev, out.view());
    const std::vector<float> got = download_f32(*cuda, out.view());
    EXPECT_TRUE(within(gather_windows(got, 1, O, windows), cpu_linear_windows(*cpu, x, 1, w->host, windows),
                       kBf16Budget));
    EXPECT_TRUE(all_finite(got));
  }
  for (float bad : {std::nanf(""), INFINITY}) {
    TestActs y;
    y.host = x.host;
    y.host[1234] = bad;
    y.dev = upload_f32(*cuda, y.host, {1, I}, DType::kBF16);
    const ops::DeviceBuffer out = poisoned(*cuda, DType::kF32, {1, O});
    cuda->linear(y.dev.view(), w->dev, out.view());
    for (float v : download_f32(*cuda, out.view())) ASSERT_FALSE(std::isfinite(v)) << "x[1234] = " << bad;
  }
}

// Split launches (wo_b's shape: 8 splits summed through the workspace) on two streams at once: each
// stream has its own workspace, so the results keep the bits of the same launches one at a time.
TEST_F(CudaLinearWgmma, SplitLaunchesOnTwoStreamsAtOnce) {
  const int64_t O = 4096, I = 8192;
  auto w1 = make_linear(*cuda, TestFormat::kFp8E8M0, fast_normal(static_cast<size_t>(O * I), 2800, 1.0f / 32), O, I,
                        "wgmma.two_streams.a");
  auto w2 = make_linear(*cuda, TestFormat::kFp8E8M0, fast_normal(static_cast<size_t>(O * I), 2801, 1.0f / 32), O, I,
                        "wgmma.two_streams.b");
  backend::cuda::set_gemv_wgmma(1);
  TestActs x = make_acts(*cuda, {1, I}, DType::kBF16, 2802);
  const ops::DeviceBuffer r1 = poisoned(*cuda, DType::kF32, {1, O}), r2 = poisoned(*cuda, DType::kF32, {1, O});
  cuda->linear(x.dev.view(), w1->dev, r1.view());
  cuda->linear(x.dev.view(), w2->dev, r2.view());
  const std::vector<float> g1 = download_f32(*cuda, r1.view()), g2 = download_f32(*cuda, r2.view());
  const auto windows = check_windows(O);
  EXPECT_TRUE(within(gather_windows(g1, 1, O, windows), cpu_linear_windows(*cpu, x, 1, w1->host, windows), kBf16Budget));
  constexpr int kReps = 16;
  std::vector<ops::DeviceBuffer> o1, o2;
  for (int i = 0; i < kReps; ++i) {
    o1.push_back(poisoned(*cuda, DType::kF32, {1, O}));
    o2.push_back(poisoned(*cuda, DType::kF32, {1, O}));
  }
  {
    const ops::BranchScope branches(*cuda);
    for (int i = 0; i < kReps; ++i) {
      cuda->branch(1);
      cuda->linear(x.dev.view(), w1->dev, o1[static_cast<size_t>(i)].view());
      cuda->branch(0);
      cuda->linear(x.dev.view(), w2->dev, o2[static_cast<size_t>(i)].view());
    }
  }
  for (int i = 0; i < kReps; ++i) {
    SCOPED_TRACE("rep " + std::to_string(i));
    EXPECT_TRUE(same_bits(download_f32(*cuda, o1[static_cast<size_t>(i)].view()), g1));
    EXPECT_TRUE(same_bits(download_f32(*cuda, o2[static_cast<size_t>(i)].view()), g2));
  }
}

}  // namespace
}  // namespace clawmine::test
