// Shared by the forward-pass tests: a fixed token sequence and a run that feeds it as prefill
// chunks of 13 and 17 tokens (one under, one over kBranchMaxTokens) followed by decode steps.
#pragma once

#include <cstdint>
#include <vector>

#include "model/deepseek_v4/layer.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"

namespace clawmine::model::deepseek_v4 {

// Every step's logits, concatenated (all rows of each step when all_logits, else its last row).
inline std::vector<float> chunked_run(const Model& m, ops::Backend& be, const std::vector<int32_t>& ids,
                                      bool all_logits, ForwardOptions fo = {}) {
  static_assert(kBranchMaxTokens >= 13 && kBranchMaxTokens < 17, "the chunks straddle the branch limit");
  SequenceCache cache = m.new_cache();
  fo.all_logits = all_logits;
  std::vector<float> out;
  auto step = [&](std::vector<int32_t> piece) {
    const Buffer b = m.forward(be, cache, piece, fo);
    out.insert(out.end(), b.f32(), b.f32() + b.view().numel());
  };
  step({ids.begin(), ids.begin() + 13});
  step({ids.begin() + 13, ids.begin() + 30});
  for (size_t i = 30; i < ids.size(); ++i) step({ids[i]});
  return out;
}

// n token ids below the tiny fixtures' vocabulary of 512.
inline std::vector<int32_t> test_ids(int n) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + 11) % 510 + 2);
  return ids;
}

}  // namespace clawmine::model::deepseek_v4
