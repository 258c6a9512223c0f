// Typed weights of a DeepSeek V4 model, one field per checkpoint tensor, named after the
// release naming (shared/specs/deepseek-v4.md §2.1). The binder fills it from either naming
// scheme (release `layers.N.attn.wq_a.weight` or transformers `model.layers.N.self_attn.
// q_a_proj.weight`) and checks every tensor's presence, shape and dtype. After binding no
// code looks a tensor up by name. Views point into the checkpoint's mappings or into
// buffers owned by the Model.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace clawmine::model::deepseek_v4 {

// How a linear's weight is stored. Dense covers F32/BF16/F16.
enum class WeightFormat { kDense, kFp8Block, kMxfp4, kNvfp4 };
const char* weight_format_name(WeightFormat f);  // "dense", "fp8-block", "mxfp4", "nvfp4"

// y = x @ W^T with W logically [out_features, in_features].
struct LinearWeight {
  std::string name;  // release module name, e.g. "layers.3.attn.wq_a"
  int64_t out_features = 0;
  int64_t in_features = 0;
  WeightFormat format = WeightFormat::kDense;
  TensorView weight;          // dense/FP8: [out, in]; FP4: [out, in/2] packed, low nibble first
  TensorView scale;           // FP8: [ceil(out/128), ceil(in/128)] E8M0 or F32; MXFP4: [out, in/32] E8M0;
                              // NVFP4: [out, in/16] E4M3
  TensorView weight_scale_2;  // NVFP4 global weight scale, F32 scalar
  TensorView input_scale;     // NVFP4 static activation scale, F32 scalar (optional)
  std::string fused_name;     // checkpoint module it was split from, e.g. "layers.0.attn.fused_wqa_wkv" ("" if none)
  // Set by the loader's audit: false when input_scale is invalid or calibration shows it
  // overflows. `--act-scale auto` then quantizes this linear's activations dynamically.
  bool input_scale_trusted = true;

  bool present() const { return !weight.empty(); }
};

struct HyperConnectionWeights {
  TensorView fn;     // [(2+hc)*hc, hc*D] F32 (hc_head: [hc, hc*D])
  TensorView base;   // [(2+hc)*hc] F32 (hc_head: [hc])
  TensorView scale;  // [3] F32 (hc_head: [1])
};

// KV compressor: c = 2 with overlap (CSA), 1 otherwise (HCA).
struct CompressorWeights {
  LinearWeight wkv;    // [c*hd, D]
  LinearWeight wgate;  // [c*hd, D]
  TensorView ape;      // [m, c*hd] F32, gate-logit bias by position inside the window
  TensorView norm;     // [hd]
};

struct IndexerWeights {
  LinearWeight wq_b;          // [Hi*Di, q_lora_rank]
  LinearWeight weights_proj;  // [Hi, D]
  CompressorWeights compressor;  // hd = Di, c = 2
};

struct AttentionWeights {
  LinearWeight wq_a;    // [q_lora_rank, D]
  TensorView q_norm;    // [q_lora_rank]
  LinearWeight wq_b;    // [H*Dh, q_lora_rank]
  LinearWeight wkv;     // [Dh, D]
  TensorView kv_norm;   // [Dh]
  LinearWeight wo_a;    // [G*Lo, H*Dh/G], block-diagonal per group
  LinearWeight wo_b;    // [D, G*Lo]
  TensorView attn_sink; // [H] F32
  std::optional<CompressorWeights> compressor;  // CSA and HCA layers
  std::optional<IndexerWeights> indexer;        // CSA layers
};

struct ExpertWeights {
  LinearWeight w1;  // gate [I, D]
  LinearWeight w3;  // up   [I, D]
  LinearWeight w2;  // down [D, I]
};

struct MoeWeights {
  LinearWeight gate;      // [E, D] router
  TensorView gate_bias;   // [E] F32, routed (non-hash) layers only
  TensorView tid2eid;     // [vocab, K] I64/I32, hash layers only
  std::vector<ExpertWeights> experts;  // E routed experts
  ExpertWeights shared_experts;
};

struct LayerWeights {
  TensorView attn_norm;  // [D]
  TensorView ffn_norm;   // [D]
  HyperConnectionWeights hc_attn;
  HyperConnectionWeights hc_ffn;
  AttentionWeights attn;
  MoeWeights ffn;
};

struct MtpWeights {
  LinearWeight e_proj;  // [D, D]
  LinearWeight h_proj;  // [D, D]
  TensorView enorm, hnorm, norm;  // [D]
  HyperConnectionWeights hc_head;
  LayerWeights block;   // a sliding-window block with a routed MoE
};

struct ModelWeights {
  TensorView embed;  // [vocab, D]
  TensorView head;   // [vocab, D]
  TensorView norm;   // [D]
  HyperConnectionWeights hc_head;
  std::vector<LayerWeights> layers;
  std::optional<MtpWeights> mtp;
};

}  // namespace clawmine::model::deepseek_v4
