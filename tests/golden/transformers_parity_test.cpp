// Golden parity with transformers' float32 DeepseekV4ForCausalLM (fixtures made by
// tools/reference/make_fixtures.py on the GPU machine). Runs with --official-qdq off, the
// mode that matches transformers (transformers-parity.md §3.2).
// Tolerances: in float32 the only differences are summation order and libm rounding, far
// below 1e-4 relative (testing-numerics.md: 1e-4 weight noise already moves nothing); a flipped
// routing or top-k decision would show up as a difference orders of magnitude larger.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/npy.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "support/test_support.h"

namespace clawmine {
namespace {

namespace fs = std::filesystem;
using model::deepseek_v4::ForwardOptions;
using model::deepseek_v4::Model;

struct GoldenCase {
  std::string model;
  fs::path json_path;
};

void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.model << "/" << c.json_path.filename().string(); }

std::vector<GoldenCase> golden_cases() {
  std::vector<GoldenCase> cases;
  const fs::path root = test::fixture_dir("golden");
  if (!fs::exists(root)) return cases;
  for (const auto& model_dir : fs::directory_iterator(root)) {
    // Quantized fixtures (a quantized.json beside the cases) belong to quantized_parity_test.cpp.
    if (!model_dir.is_directory() || fs::exists(model_dir.path() / "quantized.json")) continue;
    for (const auto& f : fs::directory_iterator(model_dir.path())) {
      const std::string name = f.path().filename().string();
      // case_<K>.json only (case_<K>.routing.json and friends are per-layer extras).
      const std::string stem = f.path().stem().string();
      if (name.rfind("case_", 0) == 0 && f.path().extension() == ".json" && stem.find('.') == std::string::npos)
        cases.push_back({model_dir.path().filename().string(), f.path()});
    }
  }
  std::sort(cases.begin(), cases.end(), [](const auto& a, const auto& b) { return a.json_path < b.json_path; });
  return cases;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

std::vector<float> logits_of(const Model& m, ops::Backend& be, const std::vector<int32_t>& ids, int64_t chunk) {
  ForwardOptions opt;
  opt.official_qdq = false;
  Buffer b = runtime::chunked_logits(m, be, ids, chunk, opt);
  return std::vector<float>(b.f32(), b.f32() + b.view().numel());
}

class GoldenParity : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenParity, LogitsMatchTransformers) {
  const GoldenCase& gc = GetParam();
  const auto meta = read_json(gc.json_path);
  const auto ids = meta.at("ids").get<std::vector<int32_t>>();
  auto model = Model::load(test::fixture_dir("models/" + gc.model));
  auto be = ops::make_cpu_backend();
  const auto ours = logits_of(*model, *be, ids, 0);
  fs::path npy = gc.json_path;
  npy.replace_extension(".logits.npy");
  const io::NpyArray golden = io::read_npy(npy);
  const int64_t T = static_cast<int64_t>(ids.size()), V = model->config().vocab_size;
  ASSERT_EQ(golden.shape, (Shape{T, V}));
  const double rel = test::max_rel_diff(ours, golden.floats);
  EXPECT_LE(rel, 1e-4) << gc.json_path;
  int mismatched = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t a = runtime::argmax(ours.data() + t * V, V), b = runtime::argmax(golden.floats.data() + t * V, V);
    if (a != b) ++mismatched;
  }
  EXPECT_EQ(mismatched, 0) << "positions with a different argmax, " << gc.json_path;
  std::printf("[golden] %s %s: T=%lld max rel diff %.3g\n", gc.model.c_str(), gc.json_path.filename().c_str(),
              static_cast<long long>(T), rel);
}

TEST_P(GoldenParity, GreedyTokensMatchTransformersGenerate) {
  const GoldenCase& gc = GetParam();
  const auto meta = read_json(gc.json_path);
  if (!meta.contains("greedy")) GTEST_SKIP() << "no greedy reference in " << gc.json_path;
  const auto ids = meta.at("ids").get<std::vector<int32_t>>();
  const int64_t P = meta["greedy"].at("prompt_len").get<int64_t>();
  const auto expected = meta["greedy"].at("tokens").get<std::vector<int32_t>>();
  auto model = Model::load(test::fixture_dir("models/" + gc.model));
  auto be = ops::make_cpu_backend();
  runtime::GenerateOptions opt;
  opt.max_tokens = static_cast<int64_t>(expected.size());
  opt.sampling.temperature = 0.0f;
  opt.stop_at_eos = false;
  opt.forward.official_qdq = false;
  const auto got = runtime::generate(*model, *be, std::vector<int32_t>(ids.begin(), ids.begin() + P), opt);
  EXPECT_EQ(got, expected);
}

TEST_P(GoldenParity, ChunkedPrefillAndDecodeAgreeWithOnePass) {
  const GoldenCase& gc = GetParam();
  const auto ids = read_json(gc.json_path).at("ids").get<std::vector<int32_t>>();
  auto model = Model::load(test::fixture_dir("models/" + gc.model));
  auto be = ops::make_cpu_backend();
  const auto full = logits_of(*model, *be, ids, 0);
  for (int64_t chunk : {1, 7}) EXPECT_LE(test::max_rel_diff(logits_of(*model, *be, ids, chunk), full), 1e-5) << "chunk " << chunk;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenParity, ::testing::ValuesIn(golden_cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           std::string n = info.param.model + "_" + info.param.json_path.stem().string();
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenParity);

}  // namespace
}  // namespace clawmine
