// bind_weights on synthetic tiny checkpoints: release and transformers naming bind to the same
// bytes; every layer kind gets the right parts; quantized formats are recognized from dtypes;
// missing / misshapen / mistyped tensors are all reported in one error naming tensor and file;
// extra tensors only warn; MTP is bound when complete.
#include "model/deepseek_v4/binder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "core/error.h"
#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/weight_walk.h"
#include "support/test_support.h"
#include "support/tiny_checkpoint.h"

namespace clawmine::model::deepseek_v4 {
namespace {

using test::TinyCheckpointOptions;
using test::TinyNaming;
using test::TinyQuant;
using test::TinyTensor;

struct Opened {
  test::TempDir dir;
  io::Checkpoint ckpt;
};

std::unique_ptr<Opened> open_tensors(const std::vector<TinyTensor>& tensors) {
  auto o = std::make_unique<Opened>();
  test::write_tiny_tensors(o->dir.path() / "model.safetensors", tensors);
  o->ckpt = io::Checkpoint::open(o->dir.path());
  return o;
}

std::unique_ptr<Opened> open_tiny(const ModelConfig& cfg, const TinyCheckpointOptions& opts) {
  return open_tensors(test::tiny_tensors(cfg, opts));
}

// name -> (view bytes, dtype, shape) of every bound tensor, linears expanded to their parts.
struct Flat {
  DType dtype;
  Shape shape;
  std::string bytes;
};
std::map<std::string, Flat> flatten(const ModelWeights& w) {
  std::map<std::string, Flat> out;
  auto add = [&](const std::string& name, const TensorView& t) {
    if (t.empty()) return;
    out[name] = {t.dtype, t.shape, std::string(static_cast<const char*>(t.data), t.nbytes())};
  };
  for_each_weight(w, [&](const WeightRef& r) {
    if (r.tensor) {
      add(r.name, *r.tensor);
    } else {
      add(r.name + ".weight", r.linear->weight);
      add(r.name + ".scale", r.linear->scale);
      add(r.name + ".weight_scale_2", r.linear->weight_scale_2);
      add(r.name + ".input_scale", r.linear->input_scale);
      out[r.name + ".format"] = {DType::kU8, {}, weight_format_name(r.linear->format)};
    }
  });
  return out;
}

void expect_same_weights(const ModelWeights& a, const ModelWeights& b) {
  const auto fa = flatten(a), fb = flatten(b);
  ASSERT_EQ(fa.size(), fb.size());
  for (const auto& [name, x] : fa) {
    auto it = fb.find(name);
    ASSERT_NE(it, fb.end()) << name;
    EXPECT_EQ(x.dtype, it->second.dtype) << name;
    EXPECT_EQ(x.shape, it->second.shape) << name;
    EXPECT_TRUE(x.bytes == it->second.bytes) << name << " differs";
  }
}

std::string bind_error(const io::Checkpoint& ckpt, const ModelConfig& cfg) {
  try {
    bind_weights(ckpt, cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<TinyTensor> without(std::vector<TinyTensor> t, const std::string& name) {
  auto it = std::find_if(t.begin(), t.end(), [&](const TinyTensor& x) { return x.name == name; });
  EXPECT_NE(it, t.end()) << name;
  if (it != t.end()) t.erase(it);
  return t;
}

TinyTensor& find(std::vector<TinyTensor>& t, const std::string& name) {
  auto it = std::find_if(t.begin(), t.end(), [&](const TinyTensor& x) { return x.name == name; });
  if (it == t.end()) throw std::runtime_error("no tensor " + name);
  return *it;
}

void reshape(TinyTensor& t, Shape shape) {
  t.shape = std::move(shape);
  t.bytes.assign(static_cast<size_t>(shape_numel(t.shape)) * dtype_size(t.dtype), 0x11);
}

TEST(Binder, ReleaseAndFusedTransformersNamingBindTheSameBytes) {
  const ModelConfig cfg = test::tiny_model_config();
  auto rel = open_tiny(cfg, {.naming = TinyNaming::kRelease});
  auto hf = open_tiny(cfg, {.naming = TinyNaming::kTransformers, .fused_experts = true});
  const BoundModel a = bind_weights(rel->ckpt, cfg);
  const BoundModel b = bind_weights(hf->ckpt, cfg);
  EXPECT_EQ(a.naming, NamingScheme::kRelease);
  EXPECT_EQ(b.naming, NamingScheme::kTransformers);
  EXPECT_TRUE(a.unused.empty());
  EXPECT_TRUE(b.unused.empty());
  ASSERT_TRUE(a.weights.mtp.has_value());
  ASSERT_TRUE(b.weights.mtp.has_value());
  expect_same_weights(a.weights, b.weights);
  // Fused experts are views: w1 and w3 of expert e are consecutive halves of gate_up_proj[e].
  const ExpertWeights& e1 = b.weights.layers[2].ffn.experts[1];
  const int64_t I = cfg.moe_intermediate_size, D = cfg.hidden_size;
  EXPECT_EQ(e1.w1.weight.shape, (Shape{I, D}));
  EXPECT_EQ(e1.w2.weight.shape, (Shape{D, I}));
  EXPECT_EQ(static_cast<const uint8_t*>(e1.w3.weight.data),
            static_cast<const uint8_t*>(e1.w1.weight.data) + e1.w1.weight.nbytes());
}

TEST(Binder, PerExpertTransformersNamingBindsTheSameBytes) {
  const ModelConfig cfg = test::tiny_model_config();
  auto rel = open_tiny(cfg, {.naming = TinyNaming::kRelease});
  auto hf = open_tiny(cfg, {.naming = TinyNaming::kTransformers, .fused_experts = false});
  ASSERT_NE(hf->ckpt.find("model.layers.0.mlp.experts.3.down_proj.weight"), nullptr);
  expect_same_weights(bind_weights(rel->ckpt, cfg).weights, bind_weights(hf->ckpt, cfg).weights);
}

TEST(Binder, LayerKindsGetTheirParts) {
  const ModelConfig cfg = test::tiny_model_config();
  auto rel = open_tiny(cfg, {});
  const ModelWeights w = bind_weights(rel->ckpt, cfg).weights;
  const int64_t D = cfg.hidden_size, Dh = cfg.head_dim, Di = cfg.index_head_dim;
  ASSERT_EQ(w.layers.size(), 4u);
  // 0: sliding / hash
  EXPECT_FALSE(w.layers[0].attn.compressor.has_value());
  EXPECT_FALSE(w.layers[0].attn.indexer.has_value());
  EXPECT_EQ(w.layers[0].ffn.tid2eid.shape, (Shape{cfg.vocab_size, cfg.num_experts_per_tok}));
  EXPECT_TRUE(w.layers[0].ffn.gate_bias.empty());
  // 1: CSA, overlap compressor c = 2, indexer
  ASSERT_TRUE(w.layers[1].attn.compressor.has_value());
  ASSERT_TRUE(w.layers[1].attn.indexer.has_value());
  EXPECT_EQ(w.layers[1].attn.compressor->wkv.weight.shape, (Shape{2 * Dh, D}));
  EXPECT_EQ(w.layers[1].attn.compressor->ape.shape, (Shape{cfg.compress_rate_csa, 2 * Dh}));
  EXPECT_EQ(w.layers[1].attn.indexer->compressor.wgate.weight.shape, (Shape{2 * Di, D}));
  EXPECT_EQ(w.layers[1].attn.indexer->compressor.ape.shape, (Shape{cfg.compress_rate_csa, 2 * Di}));
  EXPECT_EQ(w.layers[1].attn.indexer->weights_proj.weight.shape, (Shape{cfg.index_n_heads, D}));
  // 2: HCA, c = 1, no indexer, routed MoE
  ASSERT_TRUE(w.layers[2].attn.compressor.has_value());
  EXPECT_FALSE(w.layers[2].attn.indexer.has_value());
  EXPECT_EQ(w.layers[2].attn.compressor->wkv.weight.shape, (Shape{Dh, D}));
  EXPECT_EQ(w.layers[2].attn.compressor->ape.shape, (Shape{cfg.compress_rate_hca, Dh}));
  EXPECT_EQ(w.layers[2].ffn.gate_bias.shape, (Shape{cfg.n_routed_experts}));
  EXPECT_TRUE(w.layers[2].ffn.tid2eid.empty());
  EXPECT_EQ(w.layers[2].ffn.experts.size(), static_cast<size_t>(cfg.n_routed_experts));
  EXPECT_EQ(w.layers[3].attn.wo_a.weight.shape,
            (Shape{cfg.o_groups * cfg.o_lora_rank, cfg.num_attention_heads * Dh / cfg.o_groups}));
  EXPECT_EQ(w.layers[3].attn.wo_a.name, "layers.3.attn.wo_a");
  EXPECT_EQ(w.layers[3].attn.wo_a.format, WeightFormat::kDense);
}

TEST(Binder, Fp8AndMxfp4AreRecognizedInBothNamings) {
  const ModelConfig cfg = test::tiny_model_config();
  auto rel = open_tiny(cfg, {.naming = TinyNaming::kRelease, .quant = TinyQuant::kFp8Mxfp4});
  auto hf = open_tiny(cfg, {.naming = TinyNaming::kTransformers, .quant = TinyQuant::kFp8Mxfp4});
  ASSERT_NE(hf->ckpt.find("model.layers.0.self_attn.q_a_proj.weight_scale_inv"), nullptr);
  const BoundModel a = bind_weights(rel->ckpt, cfg);
  const LinearWeight& wq_a = a.weights.layers[1].attn.wq_a;
  EXPECT_EQ(wq_a.format, WeightFormat::kFp8Block);
  EXPECT_EQ(wq_a.weight.dtype, DType::kF8E4M3);
  EXPECT_EQ(wq_a.scale.dtype, DType::kF8E8M0);
  EXPECT_EQ(wq_a.scale.shape, (Shape{1, 1}));
  const LinearWeight& w2 = a.weights.layers[2].ffn.experts[3].w2;
  EXPECT_EQ(w2.format, WeightFormat::kMxfp4);
  EXPECT_EQ(w2.weight.shape, (Shape{cfg.hidden_size, cfg.moe_intermediate_size / 2}));
  EXPECT_EQ(w2.scale.shape, (Shape{cfg.hidden_size, cfg.moe_intermediate_size / 32}));
  EXPECT_EQ(a.weights.layers[1].attn.compressor->wkv.format, WeightFormat::kDense);
  EXPECT_EQ(a.weights.mtp->e_proj.format, WeightFormat::kFp8Block);
  expect_same_weights(a.weights, bind_weights(hf->ckpt, cfg).weights);
}

TEST(Binder, Nvfp4ExpertsAreRecognized) {
  const ModelConfig cfg = test::tiny_model_config();
  auto rel = open_tiny(cfg, {.quant = TinyQuant::kFp8Nvfp4});
  auto hf = open_tiny(cfg, {.naming = TinyNaming::kTransformers, .quant = TinyQuant::kFp8Nvfp4});
  const BoundModel a = bind_weights(rel->ckpt, cfg);
  const LinearWeight& w1 = a.weights.layers[0].ffn.experts[0].w1;
  EXPECT_EQ(w1.format, WeightFormat::kNvfp4);
  EXPECT_EQ(w1.weight.dtype, DType::kU8);
  EXPECT_EQ(w1.scale.dtype, DType::kF8E4M3);
  EXPECT_EQ(w1.scale.shape, (Shape{cfg.moe_intermediate_size, cfg.hidden_size / 16}));
  ASSERT_FALSE(w1.weight_scale_2.empty());
  EXPECT_FLOAT_EQ(*static_cast<const float*>(w1.weight_scale_2.data), 0.01f);
  ASSERT_FALSE(w1.input_scale.empty());
  expect_same_weights(a.weights, bind_weights(hf->ckpt, cfg).weights);
}

TEST(Binder, MissingTensorNamesTensorAndDirectory) {
  const ModelConfig cfg = test::tiny_model_config();
  auto o = open_tensors(without(test::tiny_tensors(cfg, {}), "layers.1.attn.wq_b.weight"));
  const std::string err = bind_error(o->ckpt, cfg);
  EXPECT_NE(err.find("layers.1.attn.wq_b.weight"), std::string::npos) << err;
  EXPECT_NE(err.find(o->dir.path().string()), std::string::npos) << err;
  EXPECT_NE(err.find("[64, 24]"), std::string::npos) << err;
  EXPECT_NE(err.find("found nothing"), std::string::npos) << err;
}

TEST(Binder, MissingTransformersTensorUsesTransformersName) {
  const ModelConfig cfg = test::tiny_model_config();
  auto o = open_tensors(without(test::tiny_tensors(cfg, {.naming = TinyNaming::kTransformers}),
                                "model.layers.3.self_attn.compressor.indexer.position_bias"));
  const std::string err = bind_error(o->ckpt, cfg);
  EXPECT_NE(err.find("model.layers.3.self_attn.compressor.indexer.position_bias"), std::string::npos) << err;
  EXPECT_NE(err.find("transformers"), std::string::npos) << err;
}

TEST(Binder, WrongShapeNamesTensorFileExpectedAndFound) {
  const ModelConfig cfg = test::tiny_model_config();
  auto tensors = test::tiny_tensors(cfg, {});
  reshape(find(tensors, "layers.2.attn.compressor.ape"), {8, 32});
  auto o = open_tensors(tensors);
  const std::string err = bind_error(o->ckpt, cfg);
  EXPECT_NE(err.find("layers.2.attn.compressor.ape"), std::string::npos) << err;
  EXPECT_NE(err.find((o->dir.path() / "model.safetensors").string()), std::string::npos) << err;
  EXPECT_NE(err.find("expected F32 [8, 16]"), std::string::npos) << err;
  EXPECT_NE(err.find("found F32 [8, 32]"), std::string::npos) << err;
}

TEST(Binder, WrongDtypeNamesTensorFileExpectedAndFound) {
  const ModelConfig cfg = test::tiny_model_config();
  auto tensors = test::tiny_tensors(cfg, {});
  TinyTensor& sink = find(tensors, "layers.0.attn.attn_sink");
  sink.dtype = DType::kBF16;
  reshape(sink, sink.shape);
  auto o = open_tensors(tensors);
  const std::string err = bind_error(o->ckpt, cfg);
  EXPECT_NE(err.find("layers.0.attn.attn_sink"), std::string::npos) << err;
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("expected F32 [4], found BF16 [4]"), std::string::npos) << err;
}

TEST(Binder, AllProblemsAreReportedTogether) {
  const ModelConfig cfg = test::tiny_model_config();
  auto tensors = without(test::tiny_tensors(cfg, {}), "layers.0.ffn.gate.tid2eid");
  reshape(find(tensors, "layers.3.ffn.experts.2.w3.weight"), {32, 31});
  TinyTensor& bias = find(tensors, "layers.2.ffn.gate.bias");
  bias.dtype = DType::kI32;
  auto o = open_tensors(tensors);
  const std::string err = bind_error(o->ckpt, cfg);
  EXPECT_NE(err.find("3 problem(s)"), std::string::npos) << err;
  EXPECT_NE(err.find("layers.0.ffn.gate.tid2eid"), std::string::npos) << err;
  EXPECT_NE(err.find("layers.3.ffn.experts.2.w3.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("layers.2.ffn.gate.bias"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 3) << err;
}

TEST(Binder, ExtraTensorOnlyWarns) {
  const ModelConfig cfg = test::tiny_model_config();
  auto tensors = test::tiny_tensors(cfg, {});
  tensors.push_back({"layers.0.attn.rotary.inv_freq", DType::kF32, {4}, std::vector<uint8_t>(16, 0)});
  auto o = open_tensors(tensors);
  testing::internal::CaptureStderr();
  const BoundModel b = bind_weights(o->ckpt, cfg);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(b.unused, std::vector<std::string>{"layers.0.attn.rotary.inv_freq"});
  EXPECT_NE(log.find("layers.0.attn.rotary.inv_freq"), std::string::npos) << log;
  EXPECT_NE(log.find("not used"), std::string::npos) << log;
}

TEST(Binder, MtpAbsentGivesNoticeAndNoBlock) {
  const ModelConfig cfg = test::tiny_model_config();
  auto o = open_tiny(cfg, {.mtp = false});
  testing::internal::CaptureStderr();
  const BoundModel b = bind_weights(o->ckpt, cfg);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_FALSE(b.weights.mtp.has_value());
  EXPECT_NE(log.find("no MTP block"), std::string::npos) << log;
}

TEST(Binder, IncompleteMtpIsLeftUnboundWithoutError) {
  const ModelConfig cfg = test::tiny_model_config();
  auto o = open_tensors(without(test::tiny_tensors(cfg, {}), "mtp.0.e_proj.weight"));
  testing::internal::CaptureStderr();
  const BoundModel b = bind_weights(o->ckpt, cfg);
  testing::internal::GetCapturedStderr();
  EXPECT_FALSE(b.weights.mtp.has_value());
  EXPECT_NE(b.mtp_problem.find("mtp.0.e_proj.weight"), std::string::npos) << b.mtp_problem;
  EXPECT_TRUE(b.unused.empty());
}

TEST(Binder, Int32HashTableAndAlternativeIndexerNameAreAccepted) {
  const ModelConfig cfg = test::tiny_model_config();
  auto tensors = test::tiny_tensors(cfg, {.naming = TinyNaming::kTransformers});
  TinyTensor& table = find(tensors, "model.layers.1.mlp.gate.tid2eid");
  std::vector<uint8_t> narrowed(table.bytes.size() / 2);
  for (size_t i = 0; i < narrowed.size() / 4; ++i) std::memcpy(&narrowed[i * 4], &table.bytes[i * 8], 4);
  table.dtype = DType::kI32;
  table.bytes = narrowed;
  find(tensors, "model.layers.3.self_attn.compressor.indexer.scorer.weights_proj.weight").name =
      "model.layers.3.self_attn.compressor.indexer.weights_proj.weight";
  auto o = open_tensors(tensors);
  const BoundModel b = bind_weights(o->ckpt, cfg);
  EXPECT_EQ(b.weights.layers[1].ffn.tid2eid.dtype, DType::kI32);
  EXPECT_TRUE(b.unused.empty());
}

TEST(Binder, TiedHeadFallsBackToEmbedding) {
  ModelConfig cfg = test::tiny_model_config();
  cfg.tie_word_embeddings = true;
  auto o = open_tensors(without(test::tiny_tensors(cfg, {}), "head.weight"));
  const BoundModel b = bind_weights(o->ckpt, cfg);
  EXPECT_EQ(b.weights.head.data, b.weights.embed.data);
  cfg.tie_word_embeddings = false;
  EXPECT_NE(bind_error(o->ckpt, cfg).find("head.weight"), std::string::npos);
}

TEST(Binder, UnrecognizableCheckpointIsAnError) {
  const ModelConfig cfg = test::tiny_model_config();
  auto o = open_tensors({{"foo.bar", DType::kF32, {2}, std::vector<uint8_t>(8, 0)}});
  const std::string err = bind_error(o->ckpt, cfg);
  EXPECT_NE(err.find("naming scheme"), std::string::npos) << err;
  EXPECT_NE(err.find(o->dir.path().string()), std::string::npos) << err;
}

// The committed fixture pair: the same model as released and as transformers 5.17 saved it.
TEST(Binder, FixtureReleaseAndTransformersSavedBindTheSameBytes) {
  const auto rel_dir = test::fixture_dir("models/tiny-a"), hf_dir = test::fixture_dir("models/tiny-a-hf");
  if (!std::filesystem::exists(hf_dir / "model.safetensors")) GTEST_SKIP() << "no fixture " << hf_dir;
  const ModelConfig rel_cfg = load_model_config(rel_dir), hf_cfg = load_model_config(hf_dir);
  const io::Checkpoint rel = io::Checkpoint::open(rel_dir), hf = io::Checkpoint::open(hf_dir);
  const BoundModel a = bind_weights(rel, rel_cfg), b = bind_weights(hf, hf_cfg);
  EXPECT_EQ(a.naming, NamingScheme::kRelease);
  EXPECT_EQ(b.naming, NamingScheme::kTransformersSaved);
  EXPECT_TRUE(a.unused.empty());
  EXPECT_TRUE(b.unused.empty());
  expect_same_weights(a.weights, b.weights);
}

TEST(NameMap, MapsReleaseNamesToTransformersSavedNames) {
  auto saved = [](const std::string& n) { return checkpoint_names(NamingScheme::kTransformersSaved, n); };
  using V = std::vector<std::string>;
  EXPECT_EQ(saved("embed.weight"), V{"model.embed_tokens.weight"});
  EXPECT_EQ(saved("head.weight"), V{"head.weight"});
  EXPECT_EQ(saved("hc_head_fn"), V{"model.hc_head.hc_fn"});
  EXPECT_EQ(saved("layers.1.attn.kv_norm.weight"), V{"model.layers.1.attn.norm.weight"});
  EXPECT_EQ(saved("layers.1.attn.compressor.norm.weight"), V{"model.layers.1.attn.compressor.norm.weight"});
  EXPECT_EQ(saved("layers.1.ffn.experts.3.w2.weight"), V{"model.layers.1.ffn.experts.3.w2.weight"});
}

TEST(NameMap, MapsReleaseNamesToTransformersNames) {
  auto hf = [](const std::string& n) { return checkpoint_names(NamingScheme::kTransformers, n); };
  using V = std::vector<std::string>;
  EXPECT_EQ(hf("embed.weight"), V{"model.embed_tokens.weight"});
  EXPECT_EQ(hf("hc_head_scale"), V{"model.hc_head.hc_scale"});
  EXPECT_EQ(hf("layers.7.hc_ffn_base"), V{"model.layers.7.ffn_hc.base"});
  EXPECT_EQ(hf("layers.2.attn.wq_a.scale"),
            (V{"model.layers.2.self_attn.q_a_proj.weight_scale_inv", "model.layers.2.self_attn.q_a_proj.scale"}));
  EXPECT_EQ(hf("layers.2.attn.indexer.compressor.ape"), V{"model.layers.2.self_attn.compressor.indexer.position_bias"});
  EXPECT_EQ(hf("layers.2.attn.indexer.weights_proj.weight"),
            (V{"model.layers.2.self_attn.compressor.indexer.scorer.weights_proj.weight",
               "model.layers.2.self_attn.compressor.indexer.weights_proj.weight"}));
  EXPECT_EQ(hf("layers.0.ffn.gate.bias"), V{"model.layers.0.mlp.gate.e_score_correction_bias"});
  EXPECT_EQ(hf("layers.0.ffn.gate.weight"), V{"model.layers.0.mlp.gate.weight"});
  EXPECT_EQ(hf("layers.5.ffn.experts.17.w3.weight"), V{"model.layers.5.mlp.experts.17.up_proj.weight"});
  EXPECT_EQ(hf("layers.5.ffn.shared_experts.w2.weight_scale_2"),
            V{"model.layers.5.mlp.shared_experts.down_proj.weight_scale_2"});
  EXPECT_EQ(hf("mtp.0.attn.wq_a.weight"), V{"mtp.0.attn.wq_a.weight"});
  EXPECT_EQ(checkpoint_names(NamingScheme::kRelease, "layers.1.attn.wkv.scale"),
            (V{"layers.1.attn.wkv.scale", "layers.1.attn.wkv.weight_scale_inv"}));
  EXPECT_EQ(fused_expert_names(4).gate_up, "model.layers.4.mlp.experts.gate_up_proj");
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
