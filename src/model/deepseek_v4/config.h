// The DeepSeek V4 model configuration, resolved and validated. Parsed from config.json in
// either spelling (the release's legacy keys or transformers' layer_types/compress_rates/
// rope_parameters), plus quantization_config and hf_quant_config.json when present.
// Everything downstream reads this struct, never the JSON. Spec: shared/specs/deepseek-v4.md §1,
// transformers-parity.md §2 (how transformers resolves defaults; we resolve the same way).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace clawmine::model::deepseek_v4 {

// Attention kind per layer. Structure (overlap compressor + indexer for CSA) is keyed on the
// kind, the compression rate comes from compress_rate_csa / compress_rate_hca.
enum class AttentionKind { kSliding, kCompressedSparse, kHeavilyCompressed };
enum class MoeKind { kHash, kRouted };

const char* attention_kind_name(AttentionKind k);  // "sliding", "csa", "hca"
const char* moe_kind_name(MoeKind k);              // "hash", "routed"

struct RopeScaling {
  bool yarn = false;  // YaRN applies to compressed layers only, never an mscale
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

// Release FP8 config (`quantization_config`) and NVIDIA ModelOpt (`hf_quant_config.json`).
struct QuantConfig {
  std::string quant_method;         // "" (none), "fp8", "modelopt", ...
  std::string fmt;                  // "e4m3"
  std::string activation_scheme;    // "dynamic" / "static"
  std::string scale_fmt;            // "ue8m0" or ""
  std::vector<int64_t> weight_block_size;  // [128, 128]
  std::string expert_dtype;         // "fp4" in the release
  std::string moe_quant_algo;       // "NVFP4" in NVIDIA's DSV4 export (quant_method stays "fp8")
  // hf_quant_config.json (ModelOpt)
  std::string modelopt_quant_algo;  // "NVFP4", "MIXED_PRECISION", "FP8", ...
  int64_t modelopt_group_size = 0;
  std::vector<std::string> exclude_modules;
  std::vector<std::pair<std::string, std::string>> quantized_layers;  // module -> algo (MIXED_PRECISION)
  std::string kv_cache_quant_algo;
};

struct ModelConfig {
  std::string source;  // path of the config.json this came from (for messages)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;          // D
  int64_t num_hidden_layers = 0;    // L (MTP excluded)
  int64_t num_attention_heads = 0;  // H
  int64_t head_dim = 0;             // Dh (K = V)
  int64_t qk_rope_head_dim = 0;     // R, rope on the trailing R dims
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t sliding_window = 0;       // W keys including the current token

  std::vector<AttentionKind> layer_types;  // size L
  int64_t compress_rate_csa = 4;
  int64_t compress_rate_hca = 128;
  AttentionKind mtp_layer_type = AttentionKind::kSliding;

  double rope_theta = 10000.0;           // sliding layers (and MTP)
  double compress_rope_theta = 160000.0; // CSA/HCA layers, with YaRN if rope_scaling says so
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;

  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;

  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  std::vector<MoeKind> mlp_layer_types;  // size L
  std::string scoring_func = "sqrtsoftplus";
  double routed_scaling_factor = 1.0;
  double swiglu_limit = 10.0;

  int64_t hc_mult = 4;
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;

  int64_t num_nextn_predict_layers = 0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  std::string torch_dtype;

  QuantConfig quant;

  // Derived helpers.
  int64_t compress_rate(int layer) const;  // 0 for sliding layers
  int64_t num_hash_layers() const;
  int64_t nope_head_dim() const { return head_dim - qk_rope_head_dim; }
  int64_t hc_dim() const { return hc_mult * hidden_size; }
  int64_t hc_mix_size() const { return (2 + hc_mult) * hc_mult; }
};

// Reads DIR/config.json (and DIR/hf_quant_config.json when present). Throws clawmine::Error
// naming the file and the field for unknown model_type, missing or inconsistent fields.
ModelConfig load_model_config(const std::filesystem::path& dir);
// Same from JSON text; `source` names it in errors.
ModelConfig parse_model_config(const std::string& config_json, const std::string& source,
                               const std::string& hf_quant_config_json = "");

}  // namespace clawmine::model::deepseek_v4
