// Visits every bound weight of a ModelWeights in a fixed order with its release name and the
// module family it belongs to, so summaries (parameter counts, formats by family), dumps and
// comparisons need no per-field code of their own.
#pragma once

#include <functional>
#include <string>

#include "model/deepseek_v4/weights.h"

namespace clawmine::model::deepseek_v4 {

enum class WeightFamily {
  kEmbedding,        // embed, head
  kAttention,        // wq_a, wq_b, wkv, wo_a, wo_b, q_norm, kv_norm, attn_sink
  kCompressor,       // attention KV compressor
  kIndexer,          // lightning indexer and its compressor
  kRouter,           // ffn.gate weight, bias, tid2eid
  kRoutedExperts,
  kSharedExperts,
  kHyperConnection,  // hc_* mixing weights
  kNorm,             // attn_norm, ffn_norm, final norm
  kMtpProjection,    // mtp e_proj, h_proj, enorm, hnorm, norm
};
const char* weight_family_name(WeightFamily f);  // "embedding", "attention", ...

struct WeightRef {
  std::string name;  // release name: module for linears ("layers.3.attn.wq_a"), tensor otherwise
  WeightFamily family = WeightFamily::kNorm;
  bool mtp = false;                      // part of the MTP block
  const LinearWeight* linear = nullptr;  // exactly one of linear / tensor is set
  const TensorView* tensor = nullptr;
};

// Skips empty views (absent optional parts such as a tied head or a hash layer's gate bias).
void for_each_weight(const ModelWeights& w, const std::function<void(const WeightRef&)>& fn);

// Every bound linear of `w`, writable, in the same order (the loader's --dequant rewrites them).
void for_each_linear(ModelWeights& w, const std::function<void(LinearWeight&, WeightFamily)>& fn);

}  // namespace clawmine::model::deepseek_v4
