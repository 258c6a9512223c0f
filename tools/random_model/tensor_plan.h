// What a random checkpoint holds: every tensor the binder asks for (release names, one shard
// for embed/head/final norm/hc_head and one per layer), how each is filled, and the config files.
// Linear formats come from the quantizer's own plan (quant::plan_linears) for the scheme the
// layout corresponds to, and config.json / hf_quant_config.json from the quantizer's writers,
// so the random checkpoint is laid out exactly as `clawmine quantize` lays out a real one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "random_model/draw.h"
#include "random_model/geometry.h"

namespace clawmine::tools {

// kRelease: DeepSeek's release (scheme mxfp4-experts): FP8 E4M3 + E8M0 `.scale` 128x128 for
// attention, wo_a, indexer wq_b, shared experts; MXFP4 routed experts; BF16 compressors,
// weights_proj, router, embed, head and norms; F32 hc_*, sinks, ape, router bias.
// kNvfp4: NVIDIA ModelOpt's DSV4 recipe (scheme nvfp4-experts): the same with NVFP4 routed
// experts (U8 codes, E4M3 weight_scale per 16, F32 weight_scale_2, optional input_scale).
enum class Layout { kRelease, kNvfp4 };
Layout parse_layout(const std::string& text, const std::string& flag);  // "release" | "nvfp4"
const char* layout_name(Layout l);

struct TensorJob {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  FillSpec fill;

  int64_t row_len() const;     // ids per row for kTid2eid, else 1
  int64_t units() const;       // what fill_units counts (elements, packed bytes or id rows)
  size_t nbytes() const;
};

struct Shard {
  std::string file;  // "model-00001-of-00044.safetensors"
  std::string what;  // "embed/head" or "layer 3 (csa, hash)"
  std::vector<TensorJob> tensors;  // widest dtype first, so every tensor stays aligned
  size_t nbytes() const;
};

struct PlanOptions {
  bool input_scales = true;  // kNvfp4: write a static input_scale per routed expert projection
};

struct ModelPlan {
  Geometry geometry;
  Layout layout = Layout::kRelease;
  nlohmann::json config;           // config.json
  nlohmann::json hf_quant_config;  // hf_quant_config.json, or null (release layout)
  std::vector<Shard> shards;
  size_t nbytes() const;           // sum of tensor bytes (the index's total_size)
  size_t num_tensors() const;
};

// Throws clawmine::Error when the geometry cannot be stored or loaded (the generated config.json
// goes through the model's own parser first).
ModelPlan plan_model(const Geometry& g, Layout layout, const PlanOptions& options = {});

}  // namespace clawmine::tools
