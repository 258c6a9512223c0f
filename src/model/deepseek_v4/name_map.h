// Checkpoint naming schemes and the one table that maps release tensor names
// (`layers.3.attn.wq_a.weight`) to transformers save_pretrained names
// (`model.layers.3.self_attn.q_a_proj.weight`). The binder thinks in release names and asks
// here which checkpoint names may hold each tensor. Spec: transformers-parity.md §2.
#pragma once

#include <string>
#include <vector>

#include "io/safetensors.h"

namespace clawmine::model::deepseek_v4 {

// kRelease: `layers.3.attn.wq_a.weight`. kTransformers: transformers' module names,
// `model.layers.3.self_attn.q_a_proj.weight`, experts fused or per expert.
// kTransformersSaved: what transformers 5.17 save_pretrained writes (its conversion mapping run
// in reverse): release names under `model.` except `model.embed_tokens.weight`, `head.weight`,
// `model.hc_head.hc_{fn,base,scale}` and `model.layers.N.attn.norm.weight` (= attn.kv_norm).
enum class NamingScheme { kRelease, kTransformers, kTransformersSaved };
const char* naming_scheme_name(NamingScheme s);  // "release", "transformers", "transformers-saved"

// From the names present; throws clawmine::Error naming the directory when none fits.
NamingScheme detect_naming_scheme(const io::Checkpoint& ckpt);

// Checkpoint names that may hold the release-named tensor, most likely first. Scale tensors
// (`X.scale`) also try `X.weight_scale_inv`. MTP tensors (`mtp.*`) keep their release names in
// both schemes: transformers does not build the MTP block, so nothing renames them.
std::vector<std::string> checkpoint_names(NamingScheme scheme, const std::string& release_name);

// Transformers stores routed experts fused per layer: gate_up_proj [E, 2I, D] (w1 rows
// [0, I), w3 rows [I, 2I)) and down_proj [E, D, I]. Names for layer `layer`.
struct FusedExpertNames {
  std::string gate_up;
  std::string down;
};
FusedExpertNames fused_expert_names(int layer);

}  // namespace clawmine::model::deepseek_v4
