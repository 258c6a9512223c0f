// Every quantized checkpoint layout of issue 4 binds and runs: the release (FP8 block + MXFP4),
// NVIDIA's ModelOpt MIXED_PRECISION (NVFP4 experts), the seed's layout (NVFP4 attention with
// wo_a FP8 under F32 scales, wq_a/wkv separate or fused with shared or per-shard global scales),
// weight-only W4A16_NVFP4 and plain BF16. Fused and separate storage give identical logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "support/tiny_checkpoint.h"

namespace clawmine::model::deepseek_v4 {
namespace {

using test::TinyCheckpointOptions;
using test::TinyQuant;


struct Loaded {
  test::TempDir dir;
  std::unique_ptr<Model> model;
};

std::unique_ptr<Loaded> load(const ModelConfig& cfg, const TinyCheckpointOptions& opts, const LoadOptions& lo = {}) {
  auto l = std::make_unique<Loaded>();
  test::write_tiny_checkpoint(l->dir.path(), cfg, opts);
  l->model = Model::load(l->dir.path(), lo);
  return l;
}

std::vector<float> logits(const Model& m) {
  auto be = ops::make_cpu_backend(2);
  SequenceCache cache = m.new_cache();
  ForwardOptions fo;
  fo.official_qdq = false;
  const std::vector<int32_t> ids = {3, 17, 42, 5, 63, 0, 29, 11, 8, 50, 21, 33};
  Buffer b = m.forward(*be, cache, ids, fo);
  return {b.f32(), b.f32() + b.view().numel()};
}

void expect_finite(const std::vector<float>& v) {
  ASSERT_FALSE(v.empty());
  size_t bad = 0;
  for (float x : v) bad += std::isfinite(x) ? 0 : 1;
  EXPECT_EQ(bad, 0u) << "non-finite logits";
  double amax = 0;
  for (float x : v) amax = std::max(amax, static_cast<double>(std::fabs(x)));
  EXPECT_GT(amax, 0.0);
}

float scalar(const TensorView& t) { return *t.as<const float>(); }

TEST(QuantLayout, ReleaseFp8BlockAndMxfp4Experts) {
  auto l = load(test::tiny_model_config(), {.quant = TinyQuant::kFp8Mxfp4});
  const ModelWeights& w = l->model->weights();
  const AttentionWeights& a = w.layers[1].attn;
  for (const LinearWeight* lw : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b, &a.indexer->wq_b,
                                 &w.layers[1].ffn.shared_experts.w1}) {
    EXPECT_EQ(lw->format, WeightFormat::kFp8Block) << lw->name;
    EXPECT_EQ(lw->scale.dtype, DType::kF8E8M0) << lw->name;
  }
  EXPECT_EQ(w.layers[2].ffn.experts[1].w2.format, WeightFormat::kMxfp4);
  EXPECT_EQ(w.layers[2].ffn.experts[1].w2.scale.dtype, DType::kF8E8M0);
  EXPECT_EQ(a.indexer->weights_proj.format, WeightFormat::kDense);
  expect_finite(logits(*l->model));
}

TEST(QuantLayout, ModelOptMixedPrecisionNvfp4Experts) {
  auto l = load(test::tiny_model_config(), {.quant = TinyQuant::kModelOptMixed});
  EXPECT_EQ(l->model->config().quant.modelopt_quant_algo, "MIXED_PRECISION");
  EXPECT_FALSE(l->model->config().quant.quantized_layers.empty());
  const ModelWeights& w = l->model->weights();
  const LinearWeight& e = w.layers[3].ffn.experts[2].w1;
  EXPECT_EQ(e.format, WeightFormat::kNvfp4);
  EXPECT_EQ(e.scale.dtype, DType::kF8E4M3);
  EXPECT_FALSE(e.input_scale.empty());
  EXPECT_TRUE(e.input_scale_trusted);
  EXPECT_EQ(w.layers[3].attn.wq_a.format, WeightFormat::kFp8Block);
  EXPECT_EQ(w.layers[3].ffn.shared_experts.w2.format, WeightFormat::kFp8Block);
  expect_finite(logits(*l->model));
}

TEST(QuantLayout, SeedLayoutSeparate) {
  auto l = load(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed});
  const AttentionWeights& a = l->model->weights().layers[0].attn;
  for (const LinearWeight* lw : {&a.wq_a, &a.wkv, &a.wq_b, &a.wo_b}) {
    EXPECT_EQ(lw->format, WeightFormat::kNvfp4) << lw->name;
    EXPECT_FALSE(lw->input_scale.empty()) << lw->name;
    EXPECT_TRUE(lw->fused_name.empty()) << lw->name;
  }
  EXPECT_EQ(a.wo_a.format, WeightFormat::kFp8Block);
  EXPECT_EQ(a.wo_a.scale.dtype, DType::kF32);
  EXPECT_EQ(l->model->weights().layers[2].ffn.experts[0].w3.format, WeightFormat::kNvfp4);
  expect_finite(logits(*l->model));
}

TEST(QuantLayout, SeedWoAModelOpt4dScaleEqualsWeightScaleInv) {
  auto inv = load(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed});
  auto four = load(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed, .wo_a_modelopt_4d = true});
  const LinearWeight& wo_a = four->model->weights().layers[0].attn.wo_a;
  EXPECT_EQ(wo_a.scale.shape, (Shape{1, 1}));
  EXPECT_EQ(test::max_rel_diff(logits(*four->model), logits(*inv->model)), 0.0);
}

TEST(QuantLayout, SeedFusedPerShardScalesMatchSeparate) {
  TinyCheckpointOptions sep{.quant = TinyQuant::kSeed, .per_shard_scales = true};
  TinyCheckpointOptions fused = sep;
  fused.fused_wqa_wkv = true;
  auto s = load(test::tiny_nvfp4_attention_config(), sep);
  auto f = load(test::tiny_nvfp4_attention_config(), fused);
  ASSERT_NE(f->model->checkpoint().find("layers.0.attn.fused_wqa_wkv.weight"), nullptr);
  EXPECT_EQ(f->model->checkpoint().find("layers.0.attn.wq_a.weight"), nullptr);
  const AttentionWeights& a = f->model->weights().layers[0].attn;
  EXPECT_EQ(a.wq_a.fused_name, "layers.0.attn.fused_wqa_wkv");
  EXPECT_EQ(a.wkv.fused_name, "layers.0.attn.fused_wqa_wkv");
  EXPECT_EQ(a.wq_a.out_features, 32);
  EXPECT_EQ(a.wkv.out_features, 16);
  EXPECT_EQ(scalar(a.wq_a.weight_scale_2), 0.01f);
  EXPECT_EQ(scalar(a.wkv.weight_scale_2), 0.02f);  // its own shard's value, not a max
  EXPECT_EQ(scalar(a.wq_a.input_scale), 0.002f);
  EXPECT_EQ(scalar(a.wkv.input_scale), 0.003f);
  const std::vector<float> ls = logits(*s->model), lf = logits(*f->model);
  expect_finite(lf);
  EXPECT_EQ(test::max_rel_diff(lf, ls), 0.0);
}

TEST(QuantLayout, SeedFusedSharedScalarScalesMatchSeparate) {
  TinyCheckpointOptions sep{.quant = TinyQuant::kSeed};
  TinyCheckpointOptions fused = sep;
  fused.fused_wqa_wkv = true;
  auto s = load(test::tiny_nvfp4_attention_config(), sep);
  auto f = load(test::tiny_nvfp4_attention_config(), fused);
  EXPECT_EQ(f->model->checkpoint().find("layers.1.attn.fused_wqa_wkv.weight_scale_2")->shape, Shape{});
  const AttentionWeights& a = f->model->weights().layers[1].attn;
  EXPECT_EQ(a.wq_a.weight_scale_2.data, a.wkv.weight_scale_2.data);
  EXPECT_EQ(test::max_rel_diff(logits(*f->model), logits(*s->model)), 0.0);
}

TEST(QuantLayout, WeightOnlyW4A16Nvfp4) {
  auto l = load(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kW4A16, .fused_wqa_wkv = true});
  EXPECT_EQ(l->model->config().quant.modelopt_quant_algo, "W4A16_NVFP4");
  const AttentionWeights& a = l->model->weights().layers[0].attn;
  EXPECT_EQ(a.wq_a.format, WeightFormat::kNvfp4);
  EXPECT_TRUE(a.wq_a.input_scale.empty());
  EXPECT_FALSE(a.wq_a.input_scale_trusted);
  expect_finite(logits(*l->model));
}

TEST(QuantLayout, PlainBf16) {
  auto l = load(test::tiny_model_config(), {});
  EXPECT_EQ(l->model->weights().layers[0].attn.wq_a.format, WeightFormat::kDense);
  expect_finite(logits(*l->model));
}

TEST(QuantLayout, FusedAndSeparateTogetherIsAnError) {
  const ModelConfig cfg = test::tiny_nvfp4_attention_config();
  std::vector<test::TinyTensor> t = test::tiny_tensors(cfg, {.quant = TinyQuant::kSeed, .fused_wqa_wkv = true});
  for (const test::TinyTensor& x : test::tiny_tensors(cfg, {.quant = TinyQuant::kSeed}))
    if (x.name.rfind("layers.0.attn.wq_a.", 0) == 0) t.push_back(x);
  test::TempDir dir;
  test::write_tiny_tensors(dir.path() / "model.safetensors", t);
  {
    std::ofstream f(dir.path() / "config.json");
    f << test::tiny_config_json(cfg, TinyQuant::kSeed);
  }
  try {
    Model::load(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.attn.wq_a.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("fused or separate"), std::string::npos) << e.what();
  }
}

TEST(QuantLayout, QuantizedFusedExpertsInTransformersNamingAreAClearError) {
  const ModelConfig cfg = test::tiny_model_config();
  std::vector<test::TinyTensor> t = test::tiny_tensors(cfg, {.naming = test::TinyNaming::kTransformers});
  for (test::TinyTensor& x : t) {
    if (x.name == "model.layers.2.mlp.experts.gate_up_proj") {
      x.dtype = DType::kU8;
      x.shape.back() /= 2;
      x.bytes.resize(x.bytes.size() / 4);
    }
  }
  test::TempDir dir;
  test::write_tiny_tensors(dir.path() / "model.safetensors", t);
  {
    std::ofstream f(dir.path() / "config.json");
    f << test::tiny_config_json(cfg);
  }
  try {
    Model::load(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quantized fused experts in transformers naming are not supported"),
              std::string::npos)
        << e.what();
  }
}

// Checkpoints written by other writers: `clawmine quantize` and tools/reference/ (torch, following
// DeepSeek's and ModelOpt's conventions). Each must load, pass scale validation and run finite.
TEST(QuantLayout, FixturesFromOtherWritersLoadAndRun) {
  for (const char* name : {"tiny-a-fp8", "tiny-a-mxfp4", "tiny-a-nvfp4-experts", "tiny-a-foreign-release",
                           "tiny-a-foreign-modelopt", "tiny-b-seed", "tiny-b-nvfp4-all-fused", "tiny-b-nvfp4-w4a16"}) {
    SCOPED_TRACE(name);
    const std::filesystem::path dir = test::fixture_dir(std::string("models/") + name);
    if (!std::filesystem::exists(dir / "config.json")) continue;
    std::unique_ptr<Model> m;
    try {
      m = Model::load(dir);
    } catch (const Error& e) {
      ADD_FAILURE() << e.what();
      continue;
    }
    auto be = ops::make_cpu_backend(2);
    SequenceCache cache = m->new_cache();
    ForwardOptions fo;
    fo.official_qdq = false;
    Buffer b = m->forward(*be, cache, {1, 2, 3, 4, 5, 6, 7, 8}, fo);
    expect_finite({b.f32(), b.f32() + b.view().numel()});
  }
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
