// The checkpoint quantizer behind `clawmine quantize`: a scheme decides, per linear module (by its
// release name), the stored format; the plan is applied to float32 weights that the caller decodes
// exactly, and the result is written as release-named safetensors plus config.json (and
// hf_quant_config.json for the ModelOpt schemes). Layouts: shared/specs/quant-numerics.md §1.4-1.8.
// Model-agnostic: the caller (cli/quantize.cpp) supplies modules, pass-through tensors and the
// calibrated input amax per module; nothing here reads a checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "quant/codec.h"

namespace clawmine::quant {

enum class Scheme { kMxfp4Experts, kFp8Block, kNvfp4Experts, kNvfp4All, kNvfp4W4A16 };
// "mxfp4-experts", "fp8-block", "nvfp4-experts", "nvfp4-all", "nvfp4-w4a16"; anything else is an
// error naming `flag` and listing the schemes.
Scheme parse_scheme(const std::string& text, const std::string& flag);
const char* scheme_name(Scheme s);
bool scheme_has_input_scales(Scheme s);  // nvfp4-experts, nvfp4-all

// How one linear is stored in the output.
enum class LinearFormat {
  kKeep,          // as in the input (dense bytes copied; a quantized input is written as exact F32)
  kFp8Block,      // E4M3 + `.scale` E8M0 (or `.weight_scale_inv` F32 with --scale-fmt f32)
  kFp8BlockF32,   // E4M3 + `.weight_scale_inv` F32 (the seed layout's wo_a)
  kMxfp4,         // I8 [out, in/2] + `.scale` E8M0 [out, in/32]
  kNvfp4,         // U8 [out, in/2] + weight_scale E4M3 [out, in/16] + weight_scale_2 F32 [] (+ input_scale)
};
const char* linear_format_name(LinearFormat f);

// A linear module of the input model. `decode_row(r, out)` writes W[r, 0:in] as float32, exactly.
struct SourceLinear {
  std::string name;  // release module name, "layers.3.attn.wq_a"
  int64_t out_features = 0;
  int64_t in_features = 0;
  TensorView dense;  // the stored weight when it is dense (F32/BF16/F16), else empty
  std::function<void(int64_t row, float* out)> decode_row;
};

// A non-linear tensor copied unchanged (norms, hc_*, sinks, ape, router bias, tid2eid, embed, head).
struct SourceTensor {
  std::string name;  // release tensor name
  TensorView view;
};

struct QuantizeOptions {
  Scheme scheme = Scheme::kFp8Block;
  ScaleDType fp8_scale = ScaleDType::kE8M0;  // --scale-fmt ue8m0|f32 for the FP8-block modules
  bool fuse_wqa_wkv = false;                 // NVFP4 attention: write layers.N.attn.fused_wqa_wkv
  double input_scale_mult = 1.0;             // multiplies every written input_scale, in (0, 1e6]
  std::vector<std::string> input_scale_mult_modules;  // globs limiting the multiplier (empty: all)
  // Calibrated max |x| of each module's input (module release name -> amax); needed by the
  // schemes with input scales. Routed experts without an entry (or 0) get the max over the
  // calibrated experts of the same projection (NVIDIA's exporter); w1 and w3 share theirs.
  std::map<std::string, float> input_amax;
  std::string producer_version = "0";
};

struct PlannedLinear {
  std::string name;
  LinearFormat format = LinearFormat::kKeep;
  bool input_scale = false;  // writes a static input_scale
  std::string fused_name;    // "layers.N.attn.fused_wqa_wkv" when stored fused
};

// The per-module plan for a scheme. Errors (naming the module and the scheme) for a module the
// format cannot hold: MXFP4 needs in_features % 32 == 0, NVFP4 % 16 == 0.
std::vector<PlannedLinear> plan_linears(const std::vector<SourceLinear>& linears, const QuantizeOptions& options);

// One output tensor; bytes owned here or borrowed from the input (`borrowed`).
struct OutputTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<uint8_t> bytes;
  const void* borrowed = nullptr;
  const void* data() const { return borrowed ? borrowed : bytes.data(); }
};

struct QuantizedModel {
  std::vector<PlannedLinear> plan;
  std::vector<OutputTensor> tensors;      // in input walk order
  std::map<std::string, float> input_scales;  // written input_scale per module (fused: per shard name)
};

QuantizedModel quantize_model(const std::vector<SourceLinear>& linears, const std::vector<SourceTensor>& tensors,
                              const QuantizeOptions& options);

// config.json of the output: the input's, with the quantization description of the scheme.
nlohmann::json quantized_config_json(const nlohmann::json& input_config, const QuantizeOptions& options);
// hf_quant_config.json (ModelOpt schemes) or null (fp8-block, mxfp4-experts).
nlohmann::json hf_quant_config_json(const QuantizedModel& model, const QuantizeOptions& options);

// Writes OUT/model.safetensors, OUT/config.json and OUT/hf_quant_config.json when the scheme has one.
void write_quantized_checkpoint(const std::filesystem::path& out_dir, const QuantizedModel& model,
                                const nlohmann::json& input_config, const QuantizeOptions& options);

// fnmatch-style: `*` any run of characters (dots included), `?` one character.
bool glob_match(const std::string& pattern, const std::string& text);

}  // namespace clawmine::quant
