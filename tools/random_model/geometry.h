// Model geometries for random DeepSeek V4 checkpoints: V4-Flash's real configuration
// (shared/specs/deepseek-v4.md §1.1) with fewer routed experts so one 80 GB card holds it, and a
// tiny one with the same structure for CI. The geometry becomes a release-spelling config.json
// (compress_ratios, num_hash_layers, flat rope_scaling), which the model's own config parser
// then resolves: the tool never decides layer kinds by itself.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace clawmine::tools {

struct Geometry {
  std::string name;  // "flash" or "small"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;           // D
  int64_t num_hidden_layers = 0;     // L (no MTP block is written)
  int64_t num_attention_heads = 0;   // H
  int64_t head_dim = 0;              // Dh
  int64_t qk_rope_head_dim = 0;      // R
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t sliding_window = 0;
  int64_t compress_rate_csa = 4;
  int64_t compress_rate_hca = 128;
  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_hash_layers = 3;
  double routed_scaling_factor = 1.5;
  double swiglu_limit = 10.0;
  double rope_theta = 10000.0;
  double compress_rope_theta = 160000.0;
  double yarn_factor = 16.0;
  int64_t yarn_original_max_position_embeddings = 65536;
  int64_t max_position_embeddings = 1048576;
};

// V4-Flash (hidden 4096, 64 heads x 512, q_lora 1024, 8 x 1024 output groups, indexer 64 x 128
// top-512, window 128, CSA 4 / HCA 128, vocab 129280, 3 hash layers) with 43 layers and 64
// routed experts of width 2048, top-6.
Geometry flash_geometry();
// The same structure at toy size: hidden 256, 5 layers (S S C H C), 8 experts of width 64, top-4,
// vocab 1024, HCA rate 8 so short sequences complete HCA entries.
Geometry small_geometry();
// "flash" or "small"; anything else is an error naming `flag`.
Geometry geometry_by_name(const std::string& name, const std::string& flag);

// V4-Flash's schedule truncated to L layers: two sliding layers, then CSA at even and HCA at odd
// layers ([0, 0] + [4, 128] * 20 + [4] for L = 43). Values are the compression rates.
std::vector<int64_t> compress_ratios(const Geometry& g);

// Throws clawmine::Error naming the field for sizes the loader or the quantized layouts cannot
// hold (non-positive sizes, top-k above the expert count, MXFP4/NVFP4 group divisibility, ...).
void validate_geometry(const Geometry& g);

// config.json in the release spelling, without any quantization description.
nlohmann::json base_config_json(const Geometry& g);

}  // namespace clawmine::tools
