// Geometries and their config.json. Flash values: shared/specs/deepseek-v4.md §1.1 (V4-Flash
// column); only n_routed_experts differs (64 instead of 256).
#include "random_model/geometry.h"

#include "core/error.h"

namespace clawmine::tools {

Geometry flash_geometry() {
  Geometry g;
  g.name = "flash";
  g.vocab_size = 129280;
  g.hidden_size = 4096;
  g.num_hidden_layers = 43;
  g.num_attention_heads = 64;
  g.head_dim = 512;
  g.qk_rope_head_dim = 64;
  g.q_lora_rank = 1024;
  g.o_groups = 8;
  g.o_lora_rank = 1024;
  g.sliding_window = 128;
  g.compress_rate_csa = 4;
  g.compress_rate_hca = 128;
  g.index_n_heads = 64;
  g.index_head_dim = 128;
  g.index_topk = 512;
  g.n_routed_experts = 64;  // V4-Flash has 256; 64 keeps the checkpoint under ~50 GB
  g.num_experts_per_tok = 6;
  g.moe_intermediate_size = 2048;
  g.num_hash_layers = 3;
  g.routed_scaling_factor = 1.5;
  g.swiglu_limit = 10.0;
  return g;
}

Geometry small_geometry() {
  Geometry g;
  g.name = "small";
  g.vocab_size = 1024;
  g.hidden_size = 256;
  g.num_hidden_layers = 5;
  g.num_attention_heads = 4;
  g.head_dim = 128;
  g.qk_rope_head_dim = 32;
  g.q_lora_rank = 128;
  g.o_groups = 2;
  g.o_lora_rank = 64;
  g.sliding_window = 16;
  g.compress_rate_csa = 4;
  g.compress_rate_hca = 8;
  g.index_n_heads = 8;
  g.index_head_dim = 64;
  g.index_topk = 8;
  g.n_routed_experts = 8;
  g.num_experts_per_tok = 4;
  g.moe_intermediate_size = 64;
  g.num_hash_layers = 3;
  return g;
}

Geometry geometry_by_name(const std::string& name, const std::string& flag) {
  if (name == "flash") return flash_geometry();
  if (name == "small") return small_geometry();
  throw Error(str_cat(flag, ": unknown geometry \"", name, "\"; expected flash or small"));
}

std::vector<int64_t> compress_ratios(const Geometry& g) {
  std::vector<int64_t> r;
  for (int64_t i = 0; i < g.num_hidden_layers; ++i) {
    if (i < 2) {
      r.push_back(0);
    } else {
      r.push_back(i % 2 == 0 ? g.compress_rate_csa : g.compress_rate_hca);
    }
  }
  return r;
}

void validate_geometry(const Geometry& g) {
  auto positive = [&](const char* field, int64_t v) {
    if (v <= 0) throw Error(str_cat("geometry ", g.name, ": ", field, " must be positive, got ", v));
  };
  positive("vocab_size", g.vocab_size);
  positive("hidden_size", g.hidden_size);
  positive("num_hidden_layers (--layers)", g.num_hidden_layers);
  positive("num_attention_heads", g.num_attention_heads);
  positive("head_dim", g.head_dim);
  positive("q_lora_rank", g.q_lora_rank);
  positive("o_groups", g.o_groups);
  positive("o_lora_rank", g.o_lora_rank);
  positive("sliding_window", g.sliding_window);
  positive("index_n_heads", g.index_n_heads);
  positive("index_head_dim", g.index_head_dim);
  positive("index_topk", g.index_topk);
  positive("n_routed_experts (--experts)", g.n_routed_experts);
  positive("num_experts_per_tok", g.num_experts_per_tok);
  positive("moe_intermediate_size", g.moe_intermediate_size);
  if (g.num_experts_per_tok > g.n_routed_experts) {
    throw Error(str_cat("geometry ", g.name, ": --experts ", g.n_routed_experts, " is fewer than num_experts_per_tok ",
                        g.num_experts_per_tok, " (hash rows need that many distinct experts)"));
  }
  if (g.num_attention_heads % g.o_groups != 0) {
    throw Error(str_cat("geometry ", g.name, ": o_groups ", g.o_groups, " does not divide num_attention_heads ",
                        g.num_attention_heads));
  }
  if (g.qk_rope_head_dim <= 0 || g.qk_rope_head_dim % 2 != 0 || g.qk_rope_head_dim > g.head_dim ||
      g.qk_rope_head_dim > g.index_head_dim) {
    throw Error(str_cat("geometry ", g.name, ": qk_rope_head_dim ", g.qk_rope_head_dim,
                        " must be even, positive and at most head_dim and index_head_dim"));
  }
  // Routed experts are MXFP4 (groups of 32 inputs) in the release layout, NVFP4 (16) otherwise.
  for (auto [field, in] : {std::pair<const char*, int64_t>{"hidden_size", g.hidden_size},
                           {"moe_intermediate_size", g.moe_intermediate_size}}) {
    if (in % 32 != 0) {
      throw Error(str_cat("geometry ", g.name, ": ", field, " ", in, " must be a multiple of 32 (MXFP4 experts)"));
    }
  }
  if (g.num_hash_layers < 0 || g.num_hash_layers > g.num_hidden_layers) {
    throw Error(str_cat("geometry ", g.name, ": num_hash_layers ", g.num_hash_layers, " is outside [0, ",
                        g.num_hidden_layers, "]"));
  }
}

nlohmann::json base_config_json(const Geometry& g) {
  nlohmann::json c = nlohmann::json::object();
  c["architectures"] = {"DeepseekV4ForCausalLM"};
  c["model_type"] = "deepseek_v4";
  c["vocab_size"] = g.vocab_size;
  c["hidden_size"] = g.hidden_size;
  c["num_hidden_layers"] = g.num_hidden_layers;
  c["num_attention_heads"] = g.num_attention_heads;
  c["num_key_value_heads"] = 1;
  c["head_dim"] = g.head_dim;
  c["qk_rope_head_dim"] = g.qk_rope_head_dim;
  c["q_lora_rank"] = g.q_lora_rank;
  c["o_groups"] = g.o_groups;
  c["o_lora_rank"] = g.o_lora_rank;
  c["sliding_window"] = g.sliding_window;
  c["compress_ratios"] = compress_ratios(g);
  c["compress_rate_csa"] = g.compress_rate_csa;
  c["compress_rate_hca"] = g.compress_rate_hca;
  c["rope_theta"] = g.rope_theta;
  c["compress_rope_theta"] = g.compress_rope_theta;
  c["rope_scaling"] = {{"type", "yarn"},
                       {"factor", g.yarn_factor},
                       {"original_max_position_embeddings", g.yarn_original_max_position_embeddings},
                       {"beta_fast", 32},
                       {"beta_slow", 1}};
  c["max_position_embeddings"] = g.max_position_embeddings;
  c["index_n_heads"] = g.index_n_heads;
  c["index_head_dim"] = g.index_head_dim;
  c["index_topk"] = g.index_topk;
  c["n_routed_experts"] = g.n_routed_experts;
  c["n_shared_experts"] = 1;
  c["num_experts_per_tok"] = g.num_experts_per_tok;
  c["moe_intermediate_size"] = g.moe_intermediate_size;
  c["num_hash_layers"] = g.num_hash_layers;
  c["scoring_func"] = "sqrtsoftplus";
  c["topk_method"] = "noaux_tc";
  c["norm_topk_prob"] = true;
  c["routed_scaling_factor"] = g.routed_scaling_factor;
  c["swiglu_limit"] = g.swiglu_limit;
  c["hc_mult"] = 4;
  c["hc_sinkhorn_iters"] = 20;
  c["hc_eps"] = 1e-6;
  c["rms_norm_eps"] = 1e-6;
  c["num_nextn_predict_layers"] = 0;  // no MTP block
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["tie_word_embeddings"] = false;
  c["bos_token_id"] = 0;
  c["eos_token_id"] = 1;
  c["torch_dtype"] = "bfloat16";
  return c;
}

}  // namespace clawmine::tools
