// config.json parsing: the real V4-Flash / V4-Pro release configs (tests/fixtures/configs/,
// values from shared/specs/deepseek-v4.md §1.1) give the published layer schedules, the same
// models in transformers' spelling resolve to identical ModelConfigs, transformers' defaults
// are applied when fields are absent, and every rejected config names the offending field.
#include "model/deepseek_v4/config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <initializer_list>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/deepseek_v4/weights.h"
#include "support/test_support.h"

namespace clawmine::model::deepseek_v4 {
namespace {

using nlohmann::json;

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

ModelConfig parse(const json& j, const std::string& hf_quant = "") {
  return parse_model_config(j.dump(), "/m/config.json", hf_quant);
}

// Parses and expects a clawmine::Error whose message contains every one of `needles`.
void expect_error(const json& j, std::initializer_list<std::string> needles, const std::string& hf_quant = "") {
  try {
    parse(j, hf_quant);
    ADD_FAILURE() << "expected an error mentioning '" << *needles.begin() << "' for " << j.dump().substr(0, 300);
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// Field-by-field equality (except `source`), with the field name in the failure message.
void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
#define CLAWMINE_EXPECT_FIELD(f) EXPECT_EQ(a.f, b.f) << #f
  CLAWMINE_EXPECT_FIELD(vocab_size);
  CLAWMINE_EXPECT_FIELD(hidden_size);
  CLAWMINE_EXPECT_FIELD(num_hidden_layers);
  CLAWMINE_EXPECT_FIELD(num_attention_heads);
  CLAWMINE_EXPECT_FIELD(head_dim);
  CLAWMINE_EXPECT_FIELD(qk_rope_head_dim);
  CLAWMINE_EXPECT_FIELD(q_lora_rank);
  CLAWMINE_EXPECT_FIELD(o_groups);
  CLAWMINE_EXPECT_FIELD(o_lora_rank);
  CLAWMINE_EXPECT_FIELD(sliding_window);
  CLAWMINE_EXPECT_FIELD(layer_types);
  CLAWMINE_EXPECT_FIELD(compress_rate_csa);
  CLAWMINE_EXPECT_FIELD(compress_rate_hca);
  CLAWMINE_EXPECT_FIELD(mtp_layer_type);
  CLAWMINE_EXPECT_FIELD(rope_theta);
  CLAWMINE_EXPECT_FIELD(compress_rope_theta);
  CLAWMINE_EXPECT_FIELD(rope_scaling.yarn);
  CLAWMINE_EXPECT_FIELD(rope_scaling.factor);
  CLAWMINE_EXPECT_FIELD(rope_scaling.original_max_position_embeddings);
  CLAWMINE_EXPECT_FIELD(rope_scaling.beta_fast);
  CLAWMINE_EXPECT_FIELD(rope_scaling.beta_slow);
  CLAWMINE_EXPECT_FIELD(max_position_embeddings);
  CLAWMINE_EXPECT_FIELD(index_n_heads);
  CLAWMINE_EXPECT_FIELD(index_head_dim);
  CLAWMINE_EXPECT_FIELD(index_topk);
  CLAWMINE_EXPECT_FIELD(n_routed_experts);
  CLAWMINE_EXPECT_FIELD(n_shared_experts);
  CLAWMINE_EXPECT_FIELD(num_experts_per_tok);
  CLAWMINE_EXPECT_FIELD(moe_intermediate_size);
  CLAWMINE_EXPECT_FIELD(mlp_layer_types);
  CLAWMINE_EXPECT_FIELD(scoring_func);
  CLAWMINE_EXPECT_FIELD(routed_scaling_factor);
  CLAWMINE_EXPECT_FIELD(swiglu_limit);
  CLAWMINE_EXPECT_FIELD(hc_mult);
  CLAWMINE_EXPECT_FIELD(hc_sinkhorn_iters);
  CLAWMINE_EXPECT_FIELD(hc_eps);
  CLAWMINE_EXPECT_FIELD(rms_norm_eps);
  CLAWMINE_EXPECT_FIELD(num_nextn_predict_layers);
  CLAWMINE_EXPECT_FIELD(tie_word_embeddings);
  CLAWMINE_EXPECT_FIELD(bos_token_id);
  CLAWMINE_EXPECT_FIELD(eos_token_id);
  CLAWMINE_EXPECT_FIELD(torch_dtype);
  CLAWMINE_EXPECT_FIELD(quant.quant_method);
  CLAWMINE_EXPECT_FIELD(quant.fmt);
  CLAWMINE_EXPECT_FIELD(quant.activation_scheme);
  CLAWMINE_EXPECT_FIELD(quant.scale_fmt);
  CLAWMINE_EXPECT_FIELD(quant.weight_block_size);
  CLAWMINE_EXPECT_FIELD(quant.expert_dtype);
  CLAWMINE_EXPECT_FIELD(quant.moe_quant_algo);
  CLAWMINE_EXPECT_FIELD(quant.modelopt_quant_algo);
  CLAWMINE_EXPECT_FIELD(quant.modelopt_group_size);
  CLAWMINE_EXPECT_FIELD(quant.exclude_modules);
  CLAWMINE_EXPECT_FIELD(quant.quantized_layers);
  CLAWMINE_EXPECT_FIELD(quant.kv_cache_quant_algo);
#undef CLAWMINE_EXPECT_FIELD
}

std::set<int> layers_of(const ModelConfig& c, AttentionKind kind) {
  std::set<int> out;
  for (size_t i = 0; i < c.layer_types.size(); ++i) {
    if (c.layer_types[i] == kind) out.insert(static_cast<int>(i));
  }
  return out;
}

std::set<int> range_step(int first, int last, int step) {
  std::set<int> out;
  for (int i = first; i <= last; i += step) out.insert(i);
  return out;
}

// A small valid config in the release spelling: CSA at rate 4, HCA at rate 8.
json tiny_config() {
  return json{
      {"model_type", "deepseek_v4"},
      {"vocab_size", 64},
      {"hidden_size", 32},
      {"num_hidden_layers", 4},
      {"num_attention_heads", 4},
      {"head_dim", 16},
      {"qk_rope_head_dim", 8},
      {"q_lora_rank", 16},
      {"o_groups", 2},
      {"o_lora_rank", 8},
      {"sliding_window", 8},
      {"compress_ratios", {0, 4, 8, 4}},
      {"index_n_heads", 2},
      {"index_head_dim", 16},
      {"index_topk", 4},
      {"n_routed_experts", 8},
      {"num_experts_per_tok", 2},
      {"moe_intermediate_size", 16},
      {"num_hash_layers", 1},
      {"rope_scaling",
       {{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 16}, {"beta_fast", 32}, {"beta_slow", 1}}},
  };
}

TEST(ModelConfig, FlashReleaseSchedule) {
  ModelConfig c = load_model_config(test::fixture_dir("configs/v4_flash_release"));
  EXPECT_EQ(c.source, (test::fixture_dir("configs/v4_flash_release") / "config.json").string());
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 43);
  EXPECT_EQ(c.num_attention_heads, 64);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.nope_head_dim(), 448);
  EXPECT_EQ(c.hc_dim(), 16384);
  EXPECT_EQ(c.hc_mix_size(), 24);
  ASSERT_EQ(c.layer_types.size(), 43u);
  EXPECT_EQ(layers_of(c, AttentionKind::kSliding), (std::set<int>{0, 1}));
  EXPECT_EQ(layers_of(c, AttentionKind::kCompressedSparse), range_step(2, 42, 2));
  EXPECT_EQ(layers_of(c, AttentionKind::kHeavilyCompressed), range_step(3, 41, 2));
  EXPECT_EQ(c.mtp_layer_type, AttentionKind::kSliding);
  EXPECT_EQ(c.compress_rate_csa, 4);
  EXPECT_EQ(c.compress_rate_hca, 128);
  EXPECT_EQ(c.compress_rate(0), 0);
  EXPECT_EQ(c.compress_rate(2), 4);
  EXPECT_EQ(c.compress_rate(3), 128);
  EXPECT_EQ(c.compress_rate(43), 0);  // MTP
  EXPECT_THROW(c.compress_rate(44), Error);
  EXPECT_EQ(c.num_hash_layers(), 3);
  for (int i = 0; i < 43; ++i) {
    EXPECT_EQ(c.mlp_layer_types[static_cast<size_t>(i)], i < 3 ? MoeKind::kHash : MoeKind::kRouted) << i;
  }
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.compress_rope_theta, 160000.0);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_EQ(c.rope_scaling.factor, 16.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 65536);
  EXPECT_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_EQ(c.index_topk, 512);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.routed_scaling_factor, 1.5);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.quant.quant_method, "fp8");
  EXPECT_EQ(c.quant.fmt, "e4m3");
  EXPECT_EQ(c.quant.activation_scheme, "dynamic");
  EXPECT_EQ(c.quant.scale_fmt, "ue8m0");
  EXPECT_EQ(c.quant.weight_block_size, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ(c.quant.expert_dtype, "fp4");
  EXPECT_TRUE(c.quant.modelopt_quant_algo.empty());
}

TEST(ModelConfig, ProReleaseSchedule) {
  ModelConfig c = load_model_config(test::fixture_dir("configs/v4_pro_release"));
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.o_groups, 16);
  ASSERT_EQ(c.layer_types.size(), 61u);
  EXPECT_TRUE(layers_of(c, AttentionKind::kSliding).empty());
  std::set<int> hca = range_step(3, 59, 2);
  hca.insert({0, 1});
  EXPECT_EQ(layers_of(c, AttentionKind::kHeavilyCompressed), hca);
  EXPECT_EQ(layers_of(c, AttentionKind::kCompressedSparse), range_step(2, 60, 2));
  EXPECT_EQ(c.mtp_layer_type, AttentionKind::kSliding);
  EXPECT_EQ(c.compress_rate_hca, 128);
  EXPECT_EQ(c.num_hash_layers(), 3);
  EXPECT_EQ(c.index_topk, 1024);
  EXPECT_EQ(c.n_routed_experts, 384);
  EXPECT_EQ(c.moe_intermediate_size, 3072);
  EXPECT_EQ(c.routed_scaling_factor, 2.5);
}

TEST(ModelConfig, TransformersSpellingMatchesRelease) {
  for (const char* model : {"v4_flash", "v4_pro"}) {
    SCOPED_TRACE(model);
    ModelConfig release = load_model_config(test::fixture_dir(std::string("configs/") + model + "_release"));
    ModelConfig hf = load_model_config(test::fixture_dir(std::string("configs/") + model + "_transformers"));
    expect_same_config(release, hf);
  }
}

// tiny-a-hf/config.json was written by transformers' save_pretrained from tiny-a's release-
// spelled config (fixtures of the golden tests), so it is the real transformers spelling.
TEST(ModelConfig, TransformersSavedTinyConfigMatchesRelease) {
  const std::filesystem::path release_dir = test::fixture_dir("models/tiny-a");
  const std::filesystem::path hf_dir = test::fixture_dir("models/tiny-a-hf");
  if (!std::filesystem::exists(release_dir / "config.json") || !std::filesystem::exists(hf_dir / "config.json")) {
    GTEST_SKIP() << "tiny-a fixtures not present";
  }
  ModelConfig release = load_model_config(release_dir);
  ModelConfig hf = load_model_config(hf_dir);
  hf.torch_dtype = release.torch_dtype;  // saved from the float32 reference model
  expect_same_config(release, hf);
}

TEST(ModelConfig, FlatRopeParametersMatchRopeScaling) {
  json release = read_json(test::fixture_dir("configs/v4_flash_release/config.json"));
  json flat = release;
  flat.erase("rope_scaling");
  flat["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 16.0}, {"original_max_position_embeddings", 65536},
                             {"beta_fast", 32}, {"beta_slow", 1}};
  flat.erase("qk_rope_head_dim");
  flat["partial_rotary_factor"] = 0.125;
  expect_same_config(parse(release), parse(flat));
}

TEST(ModelConfig, TinyRatiosGiveCsaFourHcaEight) {
  ModelConfig c = parse(tiny_config());
  EXPECT_EQ(c.compress_rate_csa, 4);
  EXPECT_EQ(c.compress_rate_hca, 8);
  EXPECT_EQ(c.layer_types, (std::vector<AttentionKind>{AttentionKind::kSliding, AttentionKind::kCompressedSparse,
                                                       AttentionKind::kHeavilyCompressed,
                                                       AttentionKind::kCompressedSparse}));
  EXPECT_EQ(c.compress_rate(0), 0);
  EXPECT_EQ(c.compress_rate(1), 4);
  EXPECT_EQ(c.compress_rate(2), 8);
  EXPECT_EQ(c.compress_rate(3), 4);
  EXPECT_EQ(c.mtp_layer_type, AttentionKind::kSliding);  // no MTP entry given
  EXPECT_EQ(c.num_hash_layers(), 1);

  // L + 1 entries: the last one is the MTP layer.
  json j = tiny_config();
  j["num_hidden_layers"] = 3;
  ModelConfig mtp = parse(j);
  EXPECT_EQ(mtp.layer_types.size(), 3u);
  EXPECT_EQ(mtp.mtp_layer_type, AttentionKind::kCompressedSparse);
  EXPECT_EQ(mtp.compress_rate(3), 4);

  // The same tiny model in transformers' spelling.
  json hf = tiny_config();
  hf.erase("compress_ratios");
  hf.erase("num_hash_layers");
  hf["layer_types"] = {"sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                       "compressed_sparse_attention"};
  hf["compress_rates"] = {{"compressed_sparse_attention", 4}, {"heavily_compressed_attention", 8}};
  hf["mlp_layer_types"] = {"hash_moe", "moe", "moe", "moe"};
  expect_same_config(c, parse(hf));
}

TEST(ModelConfig, LegacyCompressRateKeys) {
  json j = tiny_config();
  j["compress_ratios"] = {0, 8, 16, 8};
  j["compress_rate_csa"] = 8;
  j["compress_rate_hca"] = 16;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.compress_rate_csa, 8);
  EXPECT_EQ(c.compress_rate_hca, 16);
  EXPECT_EQ(c.layer_types[1], AttentionKind::kCompressedSparse);
  EXPECT_EQ(c.layer_types[2], AttentionKind::kHeavilyCompressed);
  j["compress_ratios"] = {0, 8, 32, 8};
  expect_error(j, {"compress_ratios[2]", "32"});
}

TEST(ModelConfig, TransformersDefaults) {
  json j = tiny_config();
  j.erase("num_hash_layers");
  j.erase("qk_rope_head_dim");
  j.erase("rope_scaling");
  j["head_dim"] = 64;
  j["index_head_dim"] = 64;
  testing::internal::CaptureStderr();
  ModelConfig c = parse(j);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(c.num_hash_layers(), 3);                      // transformers' default_num_hash_layers
  EXPECT_EQ(c.qk_rope_head_dim, 8);                       // 0.125 * head_dim, not 64
  EXPECT_NE(err.find("qk_rope_head_dim"), std::string::npos) << err;
  EXPECT_FALSE(c.rope_scaling.yarn);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.compress_rope_theta, 160000.0);
  EXPECT_EQ(c.max_position_embeddings, 1048576);
  EXPECT_EQ(c.routed_scaling_factor, 1.5);
  EXPECT_EQ(c.swiglu_limit, 10.0);
  EXPECT_EQ(c.hc_mult, 4);
  EXPECT_EQ(c.hc_sinkhorn_iters, 20);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_TRUE(c.quant.quant_method.empty());

  // Fewer layers than the default hash count: all layers hash, not an error.
  j["num_hidden_layers"] = 2;
  j["compress_ratios"] = {0, 4};
  testing::internal::CaptureStderr();
  EXPECT_EQ(parse(j).num_hash_layers(), 2);
  testing::internal::GetCapturedStderr();
}

TEST(ModelConfig, YarnDefaultsFromMaxPositions) {
  json j = tiny_config();
  j["max_position_embeddings"] = 64;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"original_max_position_embeddings", 16}};
  ModelConfig c = parse(j);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_EQ(c.rope_scaling.beta_slow, 1.0);
}

TEST(ModelConfig, EosListAndNull) {
  json j = tiny_config();
  j["eos_token_id"] = {7, 9};
  j["bos_token_id"] = nullptr;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.eos_token_id, 7);
  EXPECT_EQ(c.bos_token_id, -1);
}

TEST(ModelConfig, HfQuantMixedPrecision) {
  test::TempDir dir;
  json j = read_json(test::fixture_dir("configs/v4_flash_release/config.json"));
  j["quantization_config"]["moe_quant_algo"] = "NVFP4";
  write_text(dir.path() / "config.json", j.dump());
  write_text(dir.path() / "hf_quant_config.json", R"({
    "producer": {"name": "modelopt", "version": "0.41.0"},
    "quantization": {
      "quant_algo": "MIXED_PRECISION",
      "kv_cache_quant_algo": null,
      "group_size": 16,
      "exclude_modules": ["*.attn.*", "*.ffn.shared_experts.*", "embed.weight", "head.weight", "*.hc_*"],
      "quantized_layers": {
        "layers.3.ffn.experts.0.w1": {"quant_algo": "NVFP4", "group_size": 16},
        "layers.3.ffn.experts.0.w2": {"quant_algo": "NVFP4"}
      }
    }
  })");
  ModelConfig c = load_model_config(dir.path());
  EXPECT_EQ(c.quant.quant_method, "fp8");  // config.json's, kept
  EXPECT_EQ(c.quant.moe_quant_algo, "NVFP4");
  EXPECT_EQ(c.quant.modelopt_quant_algo, "MIXED_PRECISION");
  EXPECT_EQ(c.quant.modelopt_group_size, 16);
  EXPECT_EQ(c.quant.kv_cache_quant_algo, "");
  EXPECT_EQ(c.quant.exclude_modules.size(), 5u);
  EXPECT_EQ(c.quant.exclude_modules[0], "*.attn.*");
  ASSERT_EQ(c.quant.quantized_layers.size(), 2u);
  EXPECT_EQ(c.quant.quantized_layers[0], (std::pair<std::string, std::string>{"layers.3.ffn.experts.0.w1", "NVFP4"}));
  EXPECT_EQ(c.quant.quantized_layers[1].second, "NVFP4");
}

TEST(ModelConfig, HfQuantNvfp4WithoutQuantizationConfig) {
  json j = tiny_config();
  ModelConfig c = parse(j, R"({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4",
      "kv_cache_quant_algo": "FP8", "group_size": 16, "exclude_modules": ["lm_head"]}})");
  EXPECT_EQ(c.quant.quant_method, "modelopt");
  EXPECT_EQ(c.quant.modelopt_quant_algo, "NVFP4");
  EXPECT_EQ(c.quant.kv_cache_quant_algo, "FP8");
  EXPECT_EQ(c.quant.exclude_modules, (std::vector<std::string>{"lm_head"}));
}

TEST(ModelConfig, ModelOptQuantizationConfigInConfigJson) {
  json j = tiny_config();
  j["quantization_config"] = {{"quant_method", "modelopt"}, {"quant_algo", "NVFP4"}, {"group_size", 16},
                              {"ignore", {"lm_head", "*.attn.*"}}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.quant.quant_method, "modelopt");
  EXPECT_EQ(c.quant.modelopt_quant_algo, "NVFP4");
  EXPECT_EQ(c.quant.modelopt_group_size, 16);
  EXPECT_EQ(c.quant.exclude_modules, (std::vector<std::string>{"lm_head", "*.attn.*"}));
}

TEST(ModelConfig, KindNames) {
  EXPECT_STREQ(attention_kind_name(AttentionKind::kSliding), "sliding");
  EXPECT_STREQ(attention_kind_name(AttentionKind::kCompressedSparse), "csa");
  EXPECT_STREQ(attention_kind_name(AttentionKind::kHeavilyCompressed), "hca");
  EXPECT_STREQ(moe_kind_name(MoeKind::kHash), "hash");
  EXPECT_STREQ(moe_kind_name(MoeKind::kRouted), "routed");
  EXPECT_STREQ(weight_format_name(WeightFormat::kDense), "dense");
  EXPECT_STREQ(weight_format_name(WeightFormat::kFp8Block), "fp8-block");
  EXPECT_STREQ(weight_format_name(WeightFormat::kMxfp4), "mxfp4");
  EXPECT_STREQ(weight_format_name(WeightFormat::kNvfp4), "nvfp4");
}

// ---------------------------------------------------------------------------------------------
// Rejected configs: each message names the file and the field.

TEST(ModelConfigErrors, MissingConfigJsonNamesPath) {
  test::TempDir dir;
  try {
    load_model_config(dir.path());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir.path() / "config.json").string()), std::string::npos) << e.what();
  }
}

TEST(ModelConfigErrors, InvalidJson) {
  EXPECT_THROW(parse_model_config("{\"model_type\": ", "/m/config.json"), Error);
  try {
    parse_model_config("[1, 2]", "/m/config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/m/config.json"), std::string::npos);
  }
}

TEST(ModelConfigErrors, ModelType) {
  json j = tiny_config();
  j["model_type"] = "deepseek_v3";
  expect_error(j, {"/m/config.json", "'model_type'", "deepseek_v3"});
  j.erase("model_type");
  expect_error(j, {"missing required field 'model_type'"});
}

TEST(ModelConfigErrors, MissingRequiredFields) {
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                          "q_lora_rank", "o_groups", "o_lora_rank", "n_routed_experts", "num_experts_per_tok",
                          "moe_intermediate_size", "index_n_heads", "index_head_dim", "index_topk",
                          "sliding_window"}) {
    SCOPED_TRACE(key);
    json j = tiny_config();
    j.erase(key);
    expect_error(j, {str_cat("/m/config.json: missing required field '", key, "'")});
    j[key] = nullptr;  // null counts as absent
    expect_error(j, {str_cat("missing required field '", key, "'")});
  }
  json j = tiny_config();
  j.erase("compress_ratios");
  expect_error(j, {"missing required field 'layer_types'", "compress_ratios"});
}

TEST(ModelConfigErrors, WrongJsonTypes) {
  json j = tiny_config();
  j["hidden_size"] = "32";
  expect_error(j, {"'hidden_size'", "integer", "string"});
  j = tiny_config();
  j["head_dim"] = 16.0;
  expect_error(j, {"'head_dim'", "integer"});
  j = tiny_config();
  j["rope_scaling"]["factor"] = "4";
  expect_error(j, {"'rope_scaling.factor'", "number"});
  j = tiny_config();
  j["compress_ratios"][2] = "8";
  expect_error(j, {"'compress_ratios[2]'", "integer"});
  j = tiny_config();
  j["compress_ratios"] = 4;
  expect_error(j, {"'compress_ratios'", "list"});
  j = tiny_config();
  j["tie_word_embeddings"] = 0;
  expect_error(j, {"'tie_word_embeddings'", "boolean"});
  j = tiny_config();
  j["rope_scaling"] = "yarn";
  expect_error(j, {"'rope_scaling'", "object"});
}

TEST(ModelConfigErrors, NonPositiveSizes) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "head_dim", "o_groups", "index_topk", "sliding_window",
                          "moe_intermediate_size", "hc_mult", "hc_sinkhorn_iters", "max_position_embeddings"}) {
    SCOPED_TRACE(key);
    json j = tiny_config();
    j[key] = 0;
    expect_error(j, {str_cat("'", key, "'"), "positive"});
  }
  json j = tiny_config();
  j["index_topk"] = -5;
  expect_error(j, {"'index_topk'", "-5"});
  j = tiny_config();
  j["rms_norm_eps"] = 0.0;
  expect_error(j, {"'rms_norm_eps'"});
  j = tiny_config();
  j["compress_ratios"][1] = -4;
  expect_error(j, {"'compress_ratios[1]'", "negative"});
}

TEST(ModelConfigErrors, LayerCounts) {
  json j = tiny_config();
  j["compress_ratios"] = {0, 4, 8};
  expect_error(j, {"'compress_ratios'", "3 entries"});
  j["compress_ratios"] = {0, 4, 8, 4, 0, 0};
  expect_error(j, {"'compress_ratios'", "6 entries"});

  j = tiny_config();
  j.erase("compress_ratios");
  j["layer_types"] = {"sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"};
  expect_error(j, {"'layer_types'", "3 entries", "num_hidden_layers is 4"});

  j = tiny_config();
  j["mlp_layer_types"] = {"hash_moe", "moe", "moe"};
  j.erase("num_hash_layers");
  expect_error(j, {"'mlp_layer_types'", "3 entries"});

  j = tiny_config();
  j["num_hash_layers"] = 5;
  expect_error(j, {"'num_hash_layers'", "5"});
}

TEST(ModelConfigErrors, UnknownLayerTypeStrings) {
  json j = tiny_config();
  j.erase("compress_ratios");
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "sliding_attention"};
  expect_error(j, {"'layer_types[1]'", "full_attention"});
  j = tiny_config();
  j.erase("num_hash_layers");
  j["mlp_layer_types"] = {"hash_moe", "dense", "moe", "moe"};
  expect_error(j, {"'mlp_layer_types[1]'", "dense"});
  j = tiny_config();
  j["compress_rates"] = {{"sliding_attention", 4}};
  expect_error(j, {"'compress_rates.sliding_attention'"});
}

TEST(ModelConfigErrors, SpellingsDisagree) {
  json j = tiny_config();
  j["layer_types"] = {"sliding_attention", "compressed_sparse_attention", "compressed_sparse_attention",
                      "compressed_sparse_attention"};
  j["compress_rates"] = {{"compressed_sparse_attention", 4}, {"heavily_compressed_attention", 8}};
  expect_error(j, {"'compress_ratios'", "layer 2"});
  j = tiny_config();
  j["mlp_layer_types"] = {"hash_moe", "hash_moe", "moe", "moe"};
  expect_error(j, {"'num_hash_layers'", "mlp_layer_types[1]"});
  j = tiny_config();
  j["partial_rotary_factor"] = 0.25;  // 4 dims, but qk_rope_head_dim says 8
  expect_error(j, {"'qk_rope_head_dim'", "partial_rotary_factor"});
}

TEST(ModelConfigErrors, TwoHcaRates) {
  json j = tiny_config();
  j["compress_ratios"] = {0, 4, 8, 16};
  expect_error(j, {"'compress_ratios[3]'", "16", "HCA rate 8"});
}

TEST(ModelConfigErrors, RopeDims) {
  json j = tiny_config();
  j["qk_rope_head_dim"] = 7;
  expect_error(j, {"'qk_rope_head_dim'", "even"});
  j["qk_rope_head_dim"] = 32;
  expect_error(j, {"'qk_rope_head_dim'", "head_dim"});
  j = tiny_config();
  j["head_dim"] = 64;
  j["qk_rope_head_dim"] = 32;  // fits head_dim 64, not index_head_dim 16
  expect_error(j, {"'qk_rope_head_dim'", "index_head_dim"});
  j = tiny_config();
  j.erase("qk_rope_head_dim");
  j["partial_rotary_factor"] = 0.3;  // 16 * 0.3 is not an integer
  expect_error(j, {"'partial_rotary_factor'"});
}

TEST(ModelConfigErrors, NestedRopeParameters) {
  json j = tiny_config();
  j.erase("rope_scaling");
  j.erase("qk_rope_head_dim");
  j["partial_rotary_factor"] = 0.5;
  j["rope_parameters"] = {
      {"main", {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.5}}},
      {"compress",
       {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16}, {"rope_theta", 40000.0},
        {"partial_rotary_factor", 0.5}, {"attention_factor", 1.0}}}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.qk_rope_head_dim, 8);
  EXPECT_EQ(c.compress_rope_theta, 40000.0);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);

  // Nested without attention_factor: transformers derives an mscale of 0.1 ln 4 + 1.
  json no_af = j;
  no_af["rope_parameters"]["compress"].erase("attention_factor");
  expect_error(no_af, {"'rope_parameters.compress.attention_factor'", "1.13"});
  // Nested without partial_rotary_factor: transformers rotates the whole head.
  json no_prf = j;
  no_prf["rope_parameters"]["compress"].erase("partial_rotary_factor");
  no_prf["rope_parameters"]["main"].erase("partial_rotary_factor");
  expect_error(no_prf, {"partial_rotary_factor", "whole head"});
  // YaRN on the sliding layers.
  json main_yarn = j;
  main_yarn["rope_parameters"]["main"]["rope_type"] = "yarn";
  expect_error(main_yarn, {"'rope_parameters.main.rope_type'", "yarn"});
}

TEST(ModelConfigErrors, ModelSemantics) {
  json j = tiny_config();
  j["o_groups"] = 3;
  expect_error(j, {"'o_groups'", "num_attention_heads"});
  j = tiny_config();
  j["num_experts_per_tok"] = 9;
  expect_error(j, {"'num_experts_per_tok'", "n_routed_experts"});
  j = tiny_config();
  j["swiglu_limit"] = 0.0;
  expect_error(j, {"'swiglu_limit'", "clamp"});
  j = tiny_config();
  j["scoring_func"] = "softmax";
  expect_error(j, {"'scoring_func'", "softmax"});
  j = tiny_config();
  j["rope_scaling"]["factor"] = 0;
  expect_error(j, {"'rope_scaling.factor'"});
  j = tiny_config();
  j["rope_scaling"]["factor"] = -2.0;
  expect_error(j, {"'rope_scaling.factor'"});
  j = tiny_config();
  j["rope_scaling"]["type"] = "linear";
  expect_error(j, {"'rope_scaling.type'", "linear"});
  j = tiny_config();
  j["hc_mult"] = -1;
  expect_error(j, {"'hc_mult'"});
  j = tiny_config();
  j["n_shared_experts"] = 2;
  expect_error(j, {"'n_shared_experts'"});
}

TEST(ModelConfigErrors, QuantizationConfig) {
  json j = tiny_config();
  j["quantization_config"] = {{"fmt", "e4m3"}};
  expect_error(j, {"missing required field 'quantization_config.quant_method'"});
  j["quantization_config"] = {{"quant_method", "gptq"}};
  expect_error(j, {"'quantization_config.quant_method'", "gptq"});
  j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128}}};
  expect_error(j, {"'quantization_config.weight_block_size'"});
  j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, "128"}}};
  expect_error(j, {"'quantization_config.weight_block_size[1]'"});
  j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e5m2"}};
  expect_error(j, {"'quantization_config.fmt'", "e5m2"});
  j = tiny_config();
  j["expert_dtype"] = 4;
  expect_error(j, {"'expert_dtype'"});
}

TEST(ModelConfigErrors, HfQuantConfig) {
  const json j = tiny_config();
  expect_error(j, {"/m/hf_quant_config.json", "invalid JSON"}, "{\"quantization\": ");
  expect_error(j, {"/m/hf_quant_config.json", "missing required field 'quantization'"}, "{\"producer\": {}}");
  expect_error(j, {"/m/hf_quant_config.json", "'quantization.quant_algo'"}, R"({"quantization": {"group_size": 16}})");
  expect_error(j, {"'quantization.group_size'"}, R"({"quantization": {"quant_algo": "NVFP4", "group_size": "16"}})");
  expect_error(j, {"'quantization.exclude_modules[1]'"},
               R"({"quantization": {"quant_algo": "NVFP4", "exclude_modules": ["lm_head", 3]}})");
  expect_error(j, {"'quantization.quantized_layers'", "MIXED_PRECISION"},
               R"({"quantization": {"quant_algo": "MIXED_PRECISION"}})");
  expect_error(j, {"'quantization.quantized_layers.layers.1.ffn.experts.0.w1'", "object"},
               R"({"quantization": {"quant_algo": "MIXED_PRECISION",
                   "quantized_layers": {"layers.1.ffn.experts.0.w1": "NVFP4"}}})");
  expect_error(j, {"'quantization.quantized_layers.a.quant_algo'"},
               R"({"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": {"a": {}}}})");
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
