// A complete tiny DeepSeek V4 checkpoint for tests: a small ModelConfig covering every layer
// kind (sliding, CSA, HCA; hash and routed MoE), its config.json, and random weights written
// in the release naming or in transformers' save_pretrained naming. The same seed gives the
// same values in both namings, so tests can compare what the two bind to.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/deepseek_v4/config.h"

namespace clawmine::test {

enum class TinyNaming { kRelease, kTransformers };

// How the linears are stored. kFp8Mxfp4 is the release layout (FP8 block attention, shared
// experts and MTP projections with E8M0 scales; MXFP4 routed experts). kFp8Nvfp4 keeps the FP8
// parts and stores routed experts as ModelOpt NVFP4. kModelOptMixed is kFp8Nvfp4 plus NVIDIA's
// hf_quant_config.json (MIXED_PRECISION, attention etc. in exclude_modules). kSeed is the seed
// failure's layout: NVFP4 wq_a, wkv, wq_b, wo_b (weight_scale_2 + input_scale) and routed
// experts, wo_a FP8 with F32 `weight_scale_inv`. kW4A16 is kSeed without any input_scale,
// described as quant_algo W4A16_NVFP4.
enum class TinyQuant { kDense, kFp8Mxfp4, kFp8Nvfp4, kModelOptMixed, kSeed, kW4A16 };

struct TinyCheckpointOptions {
  TinyNaming naming = TinyNaming::kRelease;
  TinyQuant quant = TinyQuant::kDense;
  bool mtp = true;            // write the `mtp.0.*` block
  bool fused_experts = true;  // transformers naming, dense: gate_up_proj / down_proj per layer
  uint32_t seed = 1;
  // kSeed / kW4A16 only (release naming): wq_a and wkv stored as one `attn.fused_wqa_wkv` module.
  bool fused_wqa_wkv = false;
  // NVFP4 wkv gets its own weight_scale_2 / input_scale (else every NVFP4 linear shares one
  // value each); fused, they are stored per shard as [2] arrays instead of scalars.
  bool per_shard_scales = false;
  // kSeed / kW4A16: wo_a's F32 block scale as ModelOpt FP8_PB_WO `weight_scale` [ob, 1, ib, 1].
  bool wo_a_modelopt_4d = false;
};

struct TinyTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<uint8_t> bytes;
};

// 4 layers: 0 sliding/hash, 1 csa(4)/hash, 2 hca(8)/routed, 3 csa(4)/routed; MTP sliding.
model::deepseek_v4::ModelConfig tiny_model_config();
// The same with q_lora_rank 32, for layouts with NVFP4 attention (wq_b needs in_features % 16 == 0).
model::deepseek_v4::ModelConfig tiny_nvfp4_attention_config();
// config.json text for `cfg` (transformers spelling, every field explicit).
std::string tiny_config_json(const model::deepseek_v4::ModelConfig& cfg, TinyQuant quant = TinyQuant::kDense);

// Every tensor of the model in the given naming, in a fixed order.
std::vector<TinyTensor> tiny_tensors(const model::deepseek_v4::ModelConfig& cfg, const TinyCheckpointOptions& opts);

// hf_quant_config.json text for the ModelOpt layouts (kModelOptMixed, kSeed, kW4A16): quantized
// modules read off `tensors`; "" for the others.
std::string tiny_hf_quant_config_json(const std::vector<TinyTensor>& tensors, TinyQuant quant);

// One safetensors file holding `tensors`.
void write_tiny_tensors(const std::filesystem::path& file, const std::vector<TinyTensor>& tensors);

// DIR/config.json, DIR/model.safetensors and, for ModelOpt layouts, DIR/hf_quant_config.json.
void write_tiny_checkpoint(const std::filesystem::path& dir, const model::deepseek_v4::ModelConfig& cfg,
                           const TinyCheckpointOptions& opts = {});

}  // namespace clawmine::test
