// The runtime guard's explainer: replays a sequence's tokens from scratch through the numerics
// trace (CPU reference backend, fresh cache, the serving linear policy) and answers with the
// locator's first non-finite op. Deterministic; only runs after the guard has tripped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diag/locator.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "runtime/non_finite_hook.h"

namespace clawmine::diag {

// Prompt in chunks of prefill_chunk (0: one pass), then the generated tokens one at a time, until
// an op output goes non-finite. Empty optional when the replay stays finite.
std::optional<NonFiniteFinding> replay_first_non_finite(const model::deepseek_v4::Model& model,
                                                        const ops::LinearPolicy& policy,
                                                        const model::deepseek_v4::ForwardOptions& forward,
                                                        const std::vector<int32_t>& prompt,
                                                        const std::vector<int32_t>& generated,
                                                        int64_t prefill_chunk = 0);

// An explainer for GenerateOptions / SchedulerOptions; `model` must outlive it.
runtime::NonFiniteExplainer make_replay_explainer(const model::deepseek_v4::Model& model, ops::LinearPolicy policy,
                                                  model::deepseek_v4::ForwardOptions forward,
                                                  int64_t prefill_chunk = 0);

}  // namespace clawmine::diag
