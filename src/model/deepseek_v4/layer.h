// What one decoder layer's sub-steps share while a chunk runs through it. Internal to the
// forward pass (model.cpp, attention.cpp, compressor.cpp, moe.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/deepseek_v4/cache.h"
#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/model.h"
#include "model/deepseek_v4/weights.h"
#include "ops/backend.h"

namespace clawmine::model::deepseek_v4 {

struct LayerContext {
  ops::Backend& be;
  const ModelConfig& cfg;
  const LayerWeights& w;
  int layer = 0;
  AttentionKind kind = AttentionKind::kSliding;
  const std::vector<float>& inv_freq;     // the layer's RoPE table
  const std::vector<int64_t>& positions;  // [T] absolute positions of the chunk
  const ForwardOptions& options;

  // "layers.N.<part>": the diagnostics scope of a sub-step (ops::Backend::set_scope).
  std::string scope(const char* part) const { return "layers." + std::to_string(layer) + "." + part; }
};

// A compressor's shape: window rate m, CSA overlap (two halves, 2m slots), entry width hd.
struct CompressorSpec {
  int64_t rate = 0;
  bool overlap = false;
  int64_t head_dim = 0;
  enum class Qdq { kNone, kFp8Nope, kHadamardFp4 } qdq = Qdq::kNone;
};

// Attention sub-layer: h [T, D] -> out [T, D]; reads and extends cache.
Buffer attention(const LayerContext& c, const TensorView& h, LayerCache& cache);

// Consumes the chunk h [T, D] into a compressor; finished entries are appended to st.entries.
void compressor_step(const LayerContext& c, const TensorView& h, const CompressorWeights& w,
                     const CompressorSpec& spec, CompressorState& st);

// Lightning indexer (CSA): selected compressed-entry ids [T, k] I32 (-1 = none).
Buffer indexer_select(const LayerContext& c, const TensorView& h, const TensorView& qr, LayerCache& cache);

// MoE sub-layer: h [T, D] -> out [T, D].
Buffer moe(const LayerContext& c, const TensorView& h, const std::vector<int32_t>& ids);

// Applies the official code's round trip to the first n_nope dims of each of rows rows of x.
void apply_qdq(CompressorSpec::Qdq qdq, float* x, int64_t rows, int64_t width, int64_t n_nope);

}  // namespace clawmine::model::deepseek_v4
