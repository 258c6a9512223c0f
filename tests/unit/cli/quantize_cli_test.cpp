// `clawmine quantize` end to end on the tiny fixtures: outputs reload and stay close to the BF16
// model, calibrated input scales follow the recorder's amax (and the multiplier and its glob),
// and bad flags or impossible schemes fail with messages naming the flag or module.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/deepseek_v4/model.h"
#include "model/deepseek_v4/weight_walk.h"
#include "ops/backend.h"
#include "support/test_support.h"

namespace clawmine {
namespace {

namespace fs = std::filesystem;
using model::deepseek_v4::Model;
using model::deepseek_v4::WeightFormat;

test::CommandResult quantize(const std::string& args) {
  return test::run_command(test::clawmine_binary().string() + " quantize --threads 2 " + args);
}

std::string model_dir(const std::string& name) { return test::fixture_dir("models/" + name).string(); }

float scalar_of(const io::Checkpoint& ck, const std::string& name, size_t i = 0) {
  const io::TensorInfo* t = ck.find(name);
  if (!t) throw Error("missing " + name);
  float v;
  std::memcpy(&v, t->data + 4 * i, 4);
  return v;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

std::vector<float> logits(const Model& m, const std::vector<int32_t>& ids) {
  auto be = ops::make_cpu_backend(2);
  auto cache = m.new_cache();
  model::deepseek_v4::ForwardOptions fo;
  fo.official_qdq = false;
  Buffer b = m.forward(*be, cache, ids, fo);
  return {b.f32(), b.f32() + b.view().numel()};
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

const std::vector<int32_t> kIds = {5, 77, 300, 12, 498, 250, 3, 64, 128, 401, 9, 33, 222, 111, 17, 480, 2, 90};

TEST(QuantizeCli, Fp8BlockReloadsAndStaysCloseToBf16) {
  test::TempDir out;
  const auto r = quantize("--model " + model_dir("tiny-a") + " --out " + out.path().string() + " --scheme fp8-block");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(out.path() / "hf_quant_config.json"));
  const auto cfg = read_json(out.path() / "config.json");
  EXPECT_EQ(cfg["quantization_config"]["scale_fmt"], "ue8m0");
  EXPECT_EQ(cfg["n_routed_experts"], 8);
  auto q = Model::load(out.path());
  int fp8 = 0, dense = 0;
  model::deepseek_v4::for_each_weight(q->weights(), [&](const model::deepseek_v4::WeightRef& w) {
    if (!w.linear) return;
    (w.linear->format == WeightFormat::kFp8Block ? fp8 : dense)++;
  });
  EXPECT_GT(fp8, 100);
  EXPECT_GT(dense, 0);  // compressor, indexer weights_proj, gate stay BF16
  auto bf = Model::load(model_dir("tiny-a"));
  const auto a = logits(*q, kIds), b = logits(*bf, kIds);
  for (float v : a) ASSERT_TRUE(std::isfinite(v));
  EXPECT_GT(cosine(a, b), 0.99);
}

TEST(QuantizeCli, Nvfp4ExpertsCalibratesInputScalesAndWritesModelOptMetadata) {
  test::TempDir out, out2, calib;
  const std::string base = "--model " + model_dir("tiny-a") + " --scheme nvfp4-experts --out ";
  auto r = quantize(base + out.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto hf = read_json(out.path() / "hf_quant_config.json");
  EXPECT_EQ(hf["quantization"]["quant_algo"], "MIXED_PRECISION");
  EXPECT_EQ(hf["quantization"]["quantized_layers"].size(), 4u * 8u * 3u);
  EXPECT_EQ(read_json(out.path() / "config.json")["quantization_config"]["moe_quant_algo"], "NVFP4");
  const io::Checkpoint ck = io::Checkpoint::open(out.path());
  EXPECT_EQ(ck.find("layers.0.attn.wq_a.weight")->dtype, DType::kF8E4M3);
  EXPECT_EQ(ck.find("layers.0.attn.wq_a.input_scale"), nullptr);
  for (int l = 0; l < 4; ++l)
    for (int e = 0; e < 8; ++e) {
      const std::string p = str_cat("layers.", l, ".ffn.experts.", e, ".");
      const float s1 = scalar_of(ck, p + "w1.input_scale"), s3 = scalar_of(ck, p + "w3.input_scale");
      EXPECT_TRUE(std::isfinite(s1) && s1 > 0) << p;
      EXPECT_EQ(s1, s3) << p;
      EXPECT_EQ(scalar_of(ck, p + "w1.weight_scale_2"), scalar_of(ck, p + "w3.weight_scale_2")) << p;
      // Inputs are normed hidden states: amax between 1 and 100.
      EXPECT_GT(s1 * 2688.0f, 1.0f) << p;
      EXPECT_LT(s1 * 2688.0f, 100.0f) << p;
    }
  auto q = Model::load(out.path());
  const auto a = logits(*q, kIds), b = logits(*Model::load(model_dir("tiny-a")), kIds);
  EXPECT_GT(cosine(a, b), 0.98);

  // --calib: a JSON list changes the calibration; --input-scale-mult scales every input_scale.
  std::ofstream(calib.path() / "ids.json") << "[5, 77, 300, 12, 498, 250, 3, 64]";
  r = quantize(base + out2.path().string() + " --calib " + (calib.path() / "ids.json").string() +
               " --input-scale-mult 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const io::Checkpoint ck2 = io::Checkpoint::open(out2.path());
  const float a0 = scalar_of(ck, "layers.2.ffn.experts.3.w2.input_scale");
  const float a1 = scalar_of(ck2, "layers.2.ffn.experts.3.w2.input_scale");
  EXPECT_TRUE(std::isfinite(a1) && a1 > 0);
  EXPECT_NE(a0 * 4, a1);  // different calibration ids
}

TEST(QuantizeCli, SeedLayoutFusedWithMisScaledAttention) {
  test::TempDir good, seed;
  const std::string base = "--model " + model_dir("tiny-b") + " --scheme nvfp4-all --fuse-wqa-wkv --out ";
  ASSERT_EQ(quantize(base + good.path().string()).exit_code, 0);
  const auto r = quantize(base + seed.path().string() +
                          " --input-scale-mult 0.03 --input-scale-mult-modules 'layers.*.attn.*'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const io::Checkpoint g = io::Checkpoint::open(good.path()), s = io::Checkpoint::open(seed.path());
  EXPECT_EQ(s.find("layers.0.attn.wq_a.weight"), nullptr);
  const io::TensorInfo* fw = s.find("layers.1.attn.fused_wqa_wkv.weight");
  ASSERT_NE(fw, nullptr);
  EXPECT_EQ(fw->shape, (Shape{64 + 64, 32}));
  EXPECT_EQ(s.find("layers.1.attn.fused_wqa_wkv.weight_scale_2")->shape, Shape{2});
  EXPECT_EQ(s.find("layers.1.attn.wo_a.weight_scale_inv")->dtype, DType::kF32);
  for (int i = 0; i < 2; ++i) {
    const float gi = scalar_of(g, "layers.1.attn.fused_wqa_wkv.input_scale", i);
    EXPECT_NEAR(scalar_of(s, "layers.1.attn.fused_wqa_wkv.input_scale", i), gi * 0.03f, gi * 1e-6f);
  }
  EXPECT_NEAR(scalar_of(s, "layers.3.attn.wq_b.input_scale"), scalar_of(g, "layers.3.attn.wq_b.input_scale") * 0.03f, 1e-9);
  EXPECT_EQ(scalar_of(s, "layers.2.ffn.experts.5.w2.input_scale"), scalar_of(g, "layers.2.ffn.experts.5.w2.input_scale"));
  const auto hf = read_json(seed.path() / "hf_quant_config.json");
  EXPECT_TRUE(hf["quantization"]["quantized_layers"].contains("layers.0.attn.fused_wqa_wkv"));
}

TEST(QuantizeCli, ErrorsNameTheFlagOrModule) {
  test::TempDir out;
  const std::string m = "--model " + model_dir("tiny-a") + " --out " + out.path().string();
  auto expect_error = [&](const std::string& args, const std::vector<std::string>& needles) {
    const auto r = quantize(args);
    EXPECT_NE(r.exit_code, 0) << args;
    for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << args << "\n" << r.err;
  };
  expect_error(m + " --scheme int4", {"--scheme", "int4"});
  expect_error(m + " --scheme nvfp4-experts --input-scale-mult 0", {"--input-scale-mult"});
  expect_error(m + " --scheme nvfp4-experts --input-scale-mult 2e6", {"--input-scale-mult"});
  expect_error(m + " --scheme fp8-block --scale-fmt e5m2", {"--scale-fmt"});
  expect_error(m + " --scheme fp8-block --fuse-wqa-wkv", {"--fuse-wqa-wkv"});
  expect_error(m + " --scheme fp8-block --input-scale-mult 2", {"--input-scale-mult", "fp8-block"});
  expect_error(m + " --scheme mxfp4-experts", {"layers.0.ffn.experts.0.w2", "MXFP4", "32"});
  expect_error(m + " --scheme nvfp4-experts --calib /nonexistent/ids.json", {"--calib"});
  expect_error("--model /nonexistent --out " + out.path().string() + " --scheme fp8-block", {"--model"});
  expect_error("--model " + model_dir("tiny-a") + " --out " + model_dir("tiny-a") + " --scheme fp8-block", {"--out"});
  EXPECT_FALSE(fs::exists(out.path() / "model.safetensors"));
}

}  // namespace
}  // namespace clawmine
