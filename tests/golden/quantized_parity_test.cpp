// Quantized checkpoints against transformers (issue 4's acceptance bar): every golden directory
// with a quantized.json (written by tools/reference/quant_goldens.py) holds float32 logits of
// transformers' DeepseekV4ForCausalLM run on the exactly dequantized weights of
// tests/fixtures/models/<name>/. We load that checkpoint with the default policy (W4A16 / W8A16:
// weights dequantized exactly, activations kept) and --official-qdq off; the only differences
// left are float32 summation order, so max rel diff <= 1e-3 and the argmax must agree everywhere.
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
using model::deepseek_v4::Model;

struct QuantCase {
  std::string model;
  fs::path json_path;
};

std::vector<QuantCase> quantized_cases() {
  std::vector<QuantCase> cases;
  const fs::path root = test::fixture_dir("golden");
  if (!fs::exists(root)) return cases;
  for (const auto& dir : fs::directory_iterator(root)) {
    if (!dir.is_directory() || !fs::exists(dir.path() / "quantized.json")) continue;
    for (const auto& f : fs::directory_iterator(dir.path())) {
      const std::string name = f.path().filename().string(), stem = f.path().stem().string();
      if (name.rfind("case_", 0) == 0 && f.path().extension() == ".json" && stem.find('.') == std::string::npos)
        cases.push_back({dir.path().filename().string(), f.path()});
    }
  }
  std::sort(cases.begin(), cases.end(), [](const auto& a, const auto& b) { return a.json_path < b.json_path; });
  return cases;
}

class QuantizedParity : public ::testing::TestWithParam<QuantCase> {};

TEST_P(QuantizedParity, W4A16W8A16LogitsMatchTransformersOnDequantizedWeights) {
  const QuantCase& qc = GetParam();
  std::ifstream jf(qc.json_path);
  const auto meta = nlohmann::json::parse(jf);
  std::ifstream qf(qc.json_path.parent_path() / "quantized.json");
  const auto qmeta = nlohmann::json::parse(qf);
  const double tol = qmeta.at("tolerance").at("max_rel_diff").get<double>();
  ASSERT_LE(tol, 1e-3) << "the acceptance bar is 1e-3";
  const auto ids = meta.at("ids").get<std::vector<int32_t>>();
  model::deepseek_v4::LoadOptions lo;
  lo.policy.nvfp4 = ops::Nvfp4Path::kW4A16;
  lo.policy.fp8 = ops::Fp8Path::kW8A16;
  auto model = Model::load(test::fixture_dir("models/" + qc.model), lo);
  auto be = ops::make_cpu_backend();
  be->set_linear_policy(lo.policy);
  model::deepseek_v4::ForwardOptions fo;
  fo.official_qdq = false;
  Buffer b = runtime::chunked_logits(*model, *be, ids, 0, fo);
  const std::vector<float> ours(b.f32(), b.f32() + b.view().numel());
  fs::path npy = qc.json_path;
  npy.replace_extension(".logits.npy");
  const io::NpyArray golden = io::read_npy(npy);
  const int64_t T = static_cast<int64_t>(ids.size()), V = model->config().vocab_size;
  ASSERT_EQ(golden.shape, (Shape{T, V}));
  const double rel = test::max_rel_diff(ours, golden.floats);
  EXPECT_LE(rel, tol) << qc.json_path;
  int mismatched = 0;
  for (int64_t t = 0; t < T; ++t)
    if (runtime::argmax(ours.data() + t * V, V) != runtime::argmax(golden.floats.data() + t * V, V)) ++mismatched;
  EXPECT_EQ(mismatched, 0) << "positions with a different argmax, " << qc.json_path;
  std::printf("[quantized golden] %s %s: T=%lld max rel diff %.3g\n", qc.model.c_str(),
              qc.json_path.filename().c_str(), static_cast<long long>(T), rel);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, QuantizedParity, ::testing::ValuesIn(quantized_cases()),
                         [](const ::testing::TestParamInfo<QuantCase>& info) {
                           std::string n = info.param.model + "_" + info.param.json_path.stem().string();
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(QuantizedParity);

}  // namespace
}  // namespace clawmine
