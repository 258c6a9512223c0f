// Binds checkpoint tensors into ModelWeights: every tensor the config calls for is looked up
// (release or transformers naming), checked for presence, shape and dtype, and handed out as
// a zero-copy view. All problems are collected and thrown as one clawmine::Error, one line
// per tensor. Views point into the checkpoint's mappings: the Checkpoint must outlive the
// BoundModel. Spec: shared/specs/deepseek-v4.md §2, transformers-parity.md §2.
#pragma once

#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/name_map.h"
#include "model/deepseek_v4/weights.h"

namespace clawmine::model::deepseek_v4 {

struct BindOptions {
  bool bind_mtp = true;       // bind `mtp.*` when complete; false leaves them unused, unreported
  bool warn_unused = true;    // log_warn the tensors that nothing consumed
};

struct BoundModel {
  NamingScheme naming = NamingScheme::kRelease;
  ModelWeights weights;
  std::vector<std::string> unused;  // checkpoint names present but not consumed, sorted
  std::string mtp_problem;          // why `mtp.*` tensors were left unbound ("" when bound or absent)
};

BoundModel bind_weights(const io::Checkpoint& ckpt, const ModelConfig& cfg, BindOptions options = {});

}  // namespace clawmine::model::deepseek_v4
