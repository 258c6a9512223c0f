// The random model's plan at V4-Flash geometry, without writing anything: every tensor has the
// release name, dtype and shape of shared/specs/deepseek-v4.md §2.1 (with 64 experts), the layer
// schedule has all three attention kinds, and the config passes the model's parser. Plus the
// draws' statistics and the geometry errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "model/deepseek_v4/config.h"
#include "random_model/draw.h"
#include "random_model/tensor_plan.h"

namespace clawmine {
namespace {

using namespace clawmine::tools;
namespace dsv4 = model::deepseek_v4;

struct Found {
  DType dtype;
  Shape shape;
  std::string file;
};

std::map<std::string, Found> index_of(const ModelPlan& plan) {
  std::map<std::string, Found> m;
  for (const Shard& s : plan.shards)
    for (const TensorJob& t : s.tensors) m[t.name] = {t.dtype, t.shape, s.file};
  return m;
}

void expect_tensor(const std::map<std::string, Found>& m, const std::string& name, DType dtype, const Shape& shape) {
  auto it = m.find(name);
  ASSERT_NE(it, m.end()) << name << " is not in the plan";
  EXPECT_EQ(it->second.dtype, dtype) << name << ": " << dtype_name(it->second.dtype);
  EXPECT_EQ(it->second.shape, shape) << name << ": " << shape_str(it->second.shape);
}

TEST(RandomModelPlan, FlashReleaseHasTheReleaseTensorsAndSchedule) {
  const ModelPlan plan = plan_model(flash_geometry(), Layout::kRelease);
  const auto cfg = dsv4::parse_model_config(plan.config.dump(), "plan");
  ASSERT_EQ(cfg.num_hidden_layers, 43);
  int kinds[3] = {0, 0, 0};
  for (auto k : cfg.layer_types) ++kinds[static_cast<int>(k)];
  EXPECT_EQ(kinds[0], 2);   // sliding: layers 0, 1
  EXPECT_EQ(kinds[1], 21);  // CSA: even layers 2..42
  EXPECT_EQ(kinds[2], 20);  // HCA: odd layers 3..41
  EXPECT_EQ(cfg.num_hash_layers(), 3);
  EXPECT_EQ(cfg.compress_rate_hca, 128);
  EXPECT_EQ(cfg.quant.quant_method, "fp8");
  EXPECT_EQ(cfg.quant.expert_dtype, "fp4");
  EXPECT_TRUE(plan.hf_quant_config.is_null());
  EXPECT_EQ(plan.shards.size(), 44u);

  const auto m = index_of(plan);
  const auto bf16 = DType::kBF16, f32 = DType::kF32, fp8 = DType::kF8E4M3, e8m0 = DType::kF8E8M0;
  expect_tensor(m, "embed.weight", bf16, {129280, 4096});
  expect_tensor(m, "head.weight", bf16, {129280, 4096});
  expect_tensor(m, "hc_head_fn", f32, {4, 16384});
  expect_tensor(m, "layers.0.hc_attn_fn", f32, {24, 16384});
  expect_tensor(m, "layers.0.hc_ffn_scale", f32, {3});
  expect_tensor(m, "layers.0.attn.attn_sink", f32, {64});
  expect_tensor(m, "layers.0.attn.wq_a.weight", fp8, {1024, 4096});
  expect_tensor(m, "layers.0.attn.wq_a.scale", e8m0, {8, 32});
  expect_tensor(m, "layers.0.attn.wq_b.scale", e8m0, {256, 8});
  expect_tensor(m, "layers.0.attn.wkv.scale", e8m0, {4, 32});
  expect_tensor(m, "layers.0.attn.wo_a.weight", fp8, {8192, 4096});
  expect_tensor(m, "layers.0.attn.wo_b.scale", e8m0, {32, 64});
  expect_tensor(m, "layers.0.ffn.gate.tid2eid", DType::kI64, {129280, 6});
  expect_tensor(m, "layers.2.attn.compressor.wkv.weight", bf16, {1024, 4096});
  expect_tensor(m, "layers.2.attn.compressor.ape", f32, {4, 1024});
  expect_tensor(m, "layers.2.attn.indexer.wq_b.scale", e8m0, {64, 8});
  expect_tensor(m, "layers.2.attn.indexer.weights_proj.weight", bf16, {64, 4096});
  expect_tensor(m, "layers.2.attn.indexer.compressor.wgate.weight", bf16, {256, 4096});
  expect_tensor(m, "layers.2.attn.indexer.compressor.ape", f32, {4, 256});
  expect_tensor(m, "layers.2.attn.indexer.compressor.norm.weight", bf16, {128});
  expect_tensor(m, "layers.3.attn.compressor.wkv.weight", bf16, {512, 4096});
  expect_tensor(m, "layers.3.attn.compressor.ape", f32, {128, 512});
  expect_tensor(m, "layers.3.ffn.gate.weight", bf16, {64, 4096});
  expect_tensor(m, "layers.3.ffn.gate.bias", f32, {64});
  expect_tensor(m, "layers.42.ffn.experts.63.w1.weight", DType::kI8, {2048, 2048});
  expect_tensor(m, "layers.42.ffn.experts.63.w1.scale", e8m0, {2048, 128});
  expect_tensor(m, "layers.42.ffn.experts.63.w2.weight", DType::kI8, {4096, 1024});
  expect_tensor(m, "layers.42.ffn.experts.63.w2.scale", e8m0, {4096, 64});
  expect_tensor(m, "layers.42.ffn.shared_experts.w1.scale", e8m0, {16, 32});
  expect_tensor(m, "layers.42.ffn.shared_experts.w2.weight", fp8, {4096, 2048});
  EXPECT_EQ(m.count("layers.0.attn.compressor.wkv.weight"), 0u) << "sliding layers have no compressor";
  EXPECT_EQ(m.count("layers.3.attn.indexer.wq_b.weight"), 0u) << "HCA layers have no indexer";
  EXPECT_EQ(m.count("layers.3.ffn.gate.tid2eid"), 0u);
  EXPECT_EQ(m.count("layers.43.attn_norm.weight"), 0u);
  EXPECT_EQ(m.count("mtp.0.e_proj.weight"), 0u);
  EXPECT_EQ(m.at("layers.7.attn.wq_a.weight").file, "model-00009-of-00044.safetensors");
  // About 45.6 GB: 43 layers of ~1.01 GB (0.8 GB of MXFP4 experts each) + 2.1 GB embed/head.
  EXPECT_GT(plan.nbytes(), 45.0e9);
  EXPECT_LT(plan.nbytes(), 46.0e9);
}

TEST(RandomModelPlan, FlashNvfp4HasModelOptExperts) {
  const ModelPlan plan = plan_model(flash_geometry(), Layout::kNvfp4);
  const auto cfg = dsv4::parse_model_config(plan.config.dump(), "plan", plan.hf_quant_config.dump());
  EXPECT_EQ(cfg.quant.moe_quant_algo, "NVFP4");
  EXPECT_EQ(cfg.quant.modelopt_quant_algo, "MIXED_PRECISION");
  EXPECT_EQ(cfg.quant.quantized_layers.size(), 43u * 64u * 3u);
  const auto m = index_of(plan);
  expect_tensor(m, "layers.5.ffn.experts.0.w1.weight", DType::kU8, {2048, 2048});
  expect_tensor(m, "layers.5.ffn.experts.0.w1.weight_scale", DType::kF8E4M3, {2048, 256});
  expect_tensor(m, "layers.5.ffn.experts.0.w1.weight_scale_2", DType::kF32, {});
  expect_tensor(m, "layers.5.ffn.experts.0.w2.input_scale", DType::kF32, {});
  expect_tensor(m, "layers.5.attn.wq_b.scale", DType::kF8E8M0, {256, 8});
  expect_tensor(m, "layers.5.ffn.shared_experts.w3.weight", DType::kF8E4M3, {2048, 4096});
  EXPECT_GT(plan.nbytes(), 47.0e9);
  EXPECT_LT(plan.nbytes(), 48.5e9);

  PlanOptions no_scales;
  no_scales.input_scales = false;
  const auto m2 = index_of(plan_model(flash_geometry(), Layout::kNvfp4, no_scales));
  EXPECT_EQ(m2.count("layers.5.ffn.experts.0.w2.input_scale"), 0u);
  EXPECT_EQ(m2.count("layers.5.ffn.experts.0.w2.weight_scale_2"), 1u);
}

TEST(RandomModelPlan, LayerAndExpertOverrides) {
  Geometry g = flash_geometry();
  g.num_hidden_layers = 4;
  g.n_routed_experts = 8;
  const ModelPlan plan = plan_model(g, Layout::kRelease);
  const auto cfg = dsv4::parse_model_config(plan.config.dump(), "plan");
  EXPECT_EQ(cfg.layer_types,
            (std::vector<dsv4::AttentionKind>{dsv4::AttentionKind::kSliding, dsv4::AttentionKind::kSliding,
                                              dsv4::AttentionKind::kCompressedSparse,
                                              dsv4::AttentionKind::kHeavilyCompressed}));
  EXPECT_EQ(cfg.n_routed_experts, 8);
  EXPECT_EQ(plan.shards.size(), 5u);
}

TEST(RandomModelPlan, BadGeometriesAndFlagsAreNamed) {
  Geometry g = small_geometry();
  g.n_routed_experts = 2;  // fewer than top-4
  try {
    plan_model(g, Layout::kRelease);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--experts 2"), std::string::npos) << e.what();
  }
  g = small_geometry();
  g.moe_intermediate_size = 48;  // MXFP4 groups of 32
  EXPECT_THROW(plan_model(g, Layout::kRelease), Error);
  try {
    parse_layout("mxfp4", "--layout");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--layout"), std::string::npos) << e.what();
  }
  EXPECT_THROW(geometry_by_name("pro", "--geometry"), Error);
}

// Code tables and scale mixtures: over many blocks the dequantized mean square is the target.
TEST(RandomModelDraw, ScaledCodesHaveTheTargetRms) {
  const int64_t blocks = 20000, per_block = 32;
  const double target = 1.0 / std::sqrt(4096.0);
  std::vector<uint8_t> codes(blocks * per_block / 2), scales(blocks);
  FillSpec c;
  c.kind = Fill::kE2m1Pair;
  fill_units(c, DType::kU8, 1, codes.data(), 0, static_cast<int64_t>(codes.size()), 11);
  FillSpec s;
  s.kind = Fill::kE8m0Scale;
  s.log2_rms = std::log2(target / e2m1_code_rms());
  fill_units(s, DType::kF8E8M0, 1, scales.data(), 0, blocks, 12);
  static const float kE2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  double sq = 0, sum = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const double scale = e8m0_to_f32(scales[b]);
    for (int64_t k = 0; k < per_block / 2; ++k) {
      const uint8_t byte = codes[b * per_block / 2 + k];
      for (uint8_t nib : {uint8_t(byte & 0xf), uint8_t(byte >> 4)}) {
        const double v = kE2m1[nib] * scale;
        sq += v * v;
        sum += v;
      }
    }
  }
  const double n = double(blocks * per_block);
  EXPECT_NEAR(std::sqrt(sq / n) / target, 1.0, 0.03);
  EXPECT_NEAR(sum / n / target, 0.0, 0.03);  // symmetric codes

  FillSpec t;
  t.kind = Fill::kTid2eid;
  t.experts = 7;
  std::vector<int64_t> rows(500 * 6);
  fill_units(t, DType::kI64, 6, reinterpret_cast<uint8_t*>(rows.data()), 0, 500, 3);
  for (int r = 0; r < 500; ++r) {
    for (int a = 0; a < 6; ++a) {
      EXPECT_GE(rows[r * 6 + a], 0);
      EXPECT_LT(rows[r * 6 + a], 7);
      for (int b = 0; b < a; ++b) EXPECT_NE(rows[r * 6 + a], rows[r * 6 + b]) << "row " << r;
    }
  }
}

TEST(RandomModelDraw, ChunkSeedsDependOnSeedNameAndChunk) {
  EXPECT_NE(chunk_seed(1, "a", 0), chunk_seed(1, "a", 1));
  EXPECT_NE(chunk_seed(1, "a", 0), chunk_seed(1, "b", 0));
  EXPECT_NE(chunk_seed(1, "a", 0), chunk_seed(2, "a", 0));
  EXPECT_EQ(chunk_seed(1, "a", 0), chunk_seed(1, "a", 0));
}

}  // namespace
}  // namespace clawmine
