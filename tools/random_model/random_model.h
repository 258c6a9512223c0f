// Writes a random-weight DeepSeek V4 checkpoint directly in its quantized form, streaming: one
// safetensors shard per layer (plus one for embed/head), so memory holds at most two shards
// (the one being written and the one being drawn). Output: the shards,
// model.safetensors.index.json, config.json and, for the NVFP4 layout, hf_quant_config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "random_model/geometry.h"
#include "random_model/tensor_plan.h"

namespace clawmine::tools {

struct RandomModelOptions {
  std::filesystem::path out;
  Geometry geometry;
  Layout layout = Layout::kRelease;
  uint64_t seed = 0;
  int threads = 0;           // 0: all cores
  bool input_scales = true;  // NVFP4 layout: static input_scale on routed experts
  bool force = false;        // replace an earlier random model in `out` (else `out` must be empty)
};

struct RandomModelStats {
  size_t tensor_bytes = 0;  // sum of tensor data (the index's total_size)
  size_t file_bytes = 0;    // bytes of every file written, headers and JSON included
  size_t tensors = 0;
  size_t shards = 0;
  double seconds = 0.0;
};

RandomModelStats write_random_model(const RandomModelOptions& options);

}  // namespace clawmine::tools
