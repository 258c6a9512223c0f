// Token-level perplexity of a model on a text, over fixed-length sliding windows. The window
// rule matches tools/demo/train_demo.py (transformers' side) so the two numbers are comparable:
// windows of ctx ids start at 0, stride, 2*stride, ... until one reaches the end; each is a fresh
// forward from position 0 and scores only targets not scored by an earlier window (with
// stride < ctx every id after the first is scored exactly once).
#pragma once

#include <cstdint>
#include <vector>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"

namespace clawmine::cli {

struct PerplexityResult {
  double ppl = 0;
  double nll_sum = 0;         // sum of -log p(target), float64
  int64_t tokens_scored = 0;  // = ids.size() - 1
  int64_t windows = 0;
};

// ids [N] (BOS first when the caller wants it); requires N >= 2 and 0 < stride <= ctx.
PerplexityResult window_perplexity(const model::deepseek_v4::Model& model, ops::Backend& backend,
                                   const std::vector<int32_t>& ids, int64_t ctx, int64_t stride,
                                   const model::deepseek_v4::ForwardOptions& options);

}  // namespace clawmine::cli
