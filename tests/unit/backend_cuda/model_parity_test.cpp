// Whole-model parity of the CUDA backend (issue 8), on the tiny transformers fixtures:
//  * --act-dtype f32: logits within 1e-4 relative of transformers' float32 goldens with the same
//    argmax everywhere, and the same 32 greedy tokens as transformers' generate;
//  * chunked prefill (1 and 7 tokens per pass) agrees with one pass;
//  * CUDA graphs on and off give bit-identical logits for token-by-token decoding;
//  * quantized fixtures (FP8, MXFP4, NVFP4 kept packed on the device) match their goldens.
// Parity mode: --official-qdq off, as the goldens were made. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "io/npy.h"
#include "model/deepseek_v4/model.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "support/test_support.h"
#include "unit/backend_cuda/cuda_test_util.h"

namespace clawmine {
namespace {

namespace fs = std::filesystem;
using model::deepseek_v4::ForwardOptions;
using model::deepseek_v4::Model;

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

struct Case {
  std::string model;
  fs::path json_path;
  bool quantized = false;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.model << "/" << c.json_path.filename().string(); }

std::vector<Case> cases() {
  std::vector<Case> out;
  const fs::path root = test::fixture_dir("golden");
  if (!fs::exists(root)) return out;
  for (const auto& dir : fs::directory_iterator(root)) {
    if (!dir.is_directory()) continue;
    const bool quantized = fs::exists(dir.path() / "quantized.json");
    for (const auto& f : fs::directory_iterator(dir.path())) {
      const std::string name = f.path().filename().string(), stem = f.path().stem().string();
      if (name.rfind("case_", 0) == 0 && f.path().extension() == ".json" && stem.find('.') == std::string::npos)
        out.push_back({dir.path().filename().string(), f.path(), quantized});
    }
  }
  std::sort(out.begin(), out.end(), [](const Case& a, const Case& b) { return a.json_path < b.json_path; });
  return out;
}

std::vector<float> logits_of(const Model& m, ops::Backend& be, const std::vector<int32_t>& ids, int64_t chunk) {
  ForwardOptions opt;
  opt.official_qdq = false;
  Buffer b = runtime::chunked_logits(m, be, ids, chunk, opt);
  return std::vector<float>(b.f32(), b.f32() + b.view().numel());
}

// A backend and a model placed on it; the model (holding device buffers) is destroyed first.
struct Placed {
  std::unique_ptr<ops::Backend> be;
  std::unique_ptr<Model> model;
};

class CudaModelParity : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (backend::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
  Placed load(DType act, bool graphs) const { return load(test::model_cuda_options(act, graphs)); }
  // Token-by-token logits of the fixture's ids on a new backend of `options`, and its graph stats.
  std::vector<float> decode_logits(const backend::cuda::CudaOptions& options,
                                   backend::cuda::GraphStats* stats = nullptr) const {
    Placed p = load(options);
    const auto ids = read_json(GetParam().json_path).at("ids").get<std::vector<int32_t>>();
    std::vector<float> out = logits_of(*p.model, *p.be, ids, 1);
    if (stats) *stats = backend::cuda::graph_stats(*p.be);
    return out;
  }
  Placed load(const backend::cuda::CudaOptions& options) const {
    model::deepseek_v4::LoadOptions lo;
    lo.policy.nvfp4 = ops::Nvfp4Path::kW4A16;
    lo.policy.fp8 = ops::Fp8Path::kW8A16;
    Placed p;
    p.be = backend::cuda::make_cuda_backend(options);
    p.model = Model::load(test::fixture_dir("models/" + GetParam().model), lo);
    p.model->place(*p.be);
    return p;
  }
};

TEST_P(CudaModelParity, F32LogitsMatchTransformers) {
  const auto ids = read_json(GetParam().json_path).at("ids").get<std::vector<int32_t>>();
  Placed p = load(DType::kF32, false);
  const Model* model = p.model.get();
  const auto ours = logits_of(*model, *p.be, ids, 0);
  fs::path npy = GetParam().json_path;
  npy.replace_extension(".logits.npy");
  const io::NpyArray golden = io::read_npy(npy);
  const int64_t T = static_cast<int64_t>(ids.size()), V = model->config().vocab_size;
  ASSERT_EQ(golden.shape, (Shape{T, V}));
  const double rel = test::max_rel_diff(ours, golden.floats);
  EXPECT_LE(rel, 1e-4);
  int mismatched = 0;
  for (int64_t t = 0; t < T; ++t)
    if (runtime::argmax(ours.data() + t * V, V) != runtime::argmax(golden.floats.data() + t * V, V)) ++mismatched;
  EXPECT_EQ(mismatched, 0);
  std::printf("[cuda-golden] %s %s: T=%lld max rel diff %.3g\n", GetParam().model.c_str(),
              GetParam().json_path.filename().c_str(), static_cast<long long>(T), rel);
}

TEST_P(CudaModelParity, F32GreedyMatchesTransformersGenerate) {
  const auto meta = read_json(GetParam().json_path);
  if (!meta.contains("greedy")) GTEST_SKIP() << "no greedy reference";
  const auto ids = meta.at("ids").get<std::vector<int32_t>>();
  const int64_t P = meta["greedy"].at("prompt_len").get<int64_t>();
  const auto expected = meta["greedy"].at("tokens").get<std::vector<int32_t>>();
  for (bool graphs : {false, true}) {
    Placed p = load(DType::kF32, graphs);
    runtime::GenerateOptions opt;
    opt.max_tokens = static_cast<int64_t>(expected.size());
    opt.sampling.temperature = 0.0f;
    opt.stop_at_eos = false;
    opt.forward.official_qdq = false;
    EXPECT_EQ(runtime::generate(*p.model, *p.be, std::vector<int32_t>(ids.begin(), ids.begin() + P), opt), expected)
        << "graphs " << graphs;
  }
}

TEST_P(CudaModelParity, ChunkedPrefillAgreesAndGraphsAreBitIdentical) {
  const auto ids = read_json(GetParam().json_path).at("ids").get<std::vector<int32_t>>();
  std::vector<float> eager_steps;
  {
    Placed eager = load(DType::kF32, false);
    const auto full = logits_of(*eager.model, *eager.be, ids, 0);
    for (int64_t chunk : {1, 7})
      EXPECT_LE(test::max_rel_diff(logits_of(*eager.model, *eager.be, ids, chunk), full), 1e-4) << chunk;
    eager_steps = logits_of(*eager.model, *eager.be, ids, 1);
  }
  const auto graph_steps = decode_logits(test::model_cuda_options(DType::kF32, true));
  ASSERT_EQ(graph_steps.size(), eager_steps.size());
  EXPECT_EQ(std::memcmp(graph_steps.data(), eager_steps.data(), eager_steps.size() * sizeof(float)), 0)
      << "graphs on and off differ";
}

// Early forks (CudaOptions::early_forks, ops::Backend::branch_early) drop the redundant edges
// capture gives the early branches' first kernels, and keep the bits of eager launches.
TEST_P(CudaModelParity, EarlyForksDropRedundantEdgesAndAreBitIdentical) {
  if (std::getenv("CLAWMINE_EARLY_FORKS") != nullptr) GTEST_SKIP() << "CLAWMINE_EARLY_FORKS is set";
  const std::vector<float> eager_steps = decode_logits(test::model_cuda_options(DType::kF32, false));
  backend::cuda::GraphStats stats[2];
  for (const bool early : {false, true}) {
    SCOPED_TRACE(str_cat("early forks ", early));
    backend::cuda::CudaOptions o = test::model_cuda_options(DType::kF32, true);
    o.early_forks = early;
    o.graph_report = true;
    const std::vector<float> steps = decode_logits(o, &stats[early]);
    EXPECT_GT(stats[early].instantiated + stats[early].updated, 0) << "no step was recorded";
    ASSERT_EQ(steps.size(), eager_steps.size());
    EXPECT_EQ(std::memcmp(steps.data(), eager_steps.data(), eager_steps.size() * sizeof(float)), 0)
        << "graphs and eager launches differ";
  }
  EXPECT_EQ(stats[0].early_forks, 0);
  EXPECT_GT(stats[1].early_forks, 0) << "no fork was recorded early";
  EXPECT_LT(stats[1].redundant_edges, stats[0].redundant_edges) << "early forks left every redundant edge";
}

TEST_P(CudaModelParity, Bf16ModeStaysFiniteAndClose) {
  const auto ids = read_json(GetParam().json_path).at("ids").get<std::vector<int32_t>>();
  Placed p = load(DType::kBF16, true);
  const Model* model = p.model.get();
  const auto ours = logits_of(*model, *p.be, ids, 0);
  for (float v : ours) ASSERT_TRUE(std::isfinite(v));
  fs::path npy = GetParam().json_path;
  npy.replace_extension(".logits.npy");
  const io::NpyArray golden = io::read_npy(npy);
  // Whole-model BF16 against float32 goldens is judged by median-row cosine side by side with
  // transformers' autocast (tools/reference/bf16_side_by_side.py); here only a loose sanity bound.
  const int64_t V = model->config().vocab_size, T = static_cast<int64_t>(ids.size());
  std::vector<double> cos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double a = ours[t * V + v], b = golden.floats[t * V + v];
      ab += a * b, aa += a * a, bb += b * b;
    }
    cos[t] = ab / std::sqrt(aa * bb);
  }
  std::nth_element(cos.begin(), cos.begin() + T / 2, cos.end());
  EXPECT_GE(cos[T / 2], 0.99) << "median-row cosine of BF16 logits vs float32 goldens";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModelParity, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string n = info.param.model + "_" + info.param.json_path.stem().string();
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CudaModelParity);

}  // namespace
}  // namespace clawmine
