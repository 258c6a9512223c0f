// The runtime guard's explainer: replays a sequence's tokens from scratch through the numerics
// trace (fresh cache, the serving linear policy) and answers with the locator's first non-finite
// op. Deterministic; only runs after the guard has tripped. It runs on the backend it is given
// (the serving one: CPU or CUDA, the model placed there), or on a CPU reference backend of its own.
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
// an op output goes non-finite. Empty optional when the replay stays finite. The replay sets
// `policy` on `backend` and puts the backend's own policy back afterwards; its cache is released
// before it returns. Call it between forward passes of the backend's other sequences (the
// scheduler's and generate's explainer hooks do), never during one.
std::optional<NonFiniteFinding> replay_first_non_finite(const model::deepseek_v4::Model& model,
                                                        ops::Backend& backend, const ops::LinearPolicy& policy,
                                                        const model::deepseek_v4::ForwardOptions& forward,
                                                        const std::vector<int32_t>& prompt,
                                                        const std::vector<int32_t>& generated,
                                                        int64_t prefill_chunk = 0);
// The same on a fresh CPU backend (the model's host weights).
std::optional<NonFiniteFinding> replay_first_non_finite(const model::deepseek_v4::Model& model,
                                                        const ops::LinearPolicy& policy,
                                                        const model::deepseek_v4::ForwardOptions& forward,
                                                        const std::vector<int32_t>& prompt,
                                                        const std::vector<int32_t>& generated,
                                                        int64_t prefill_chunk = 0);

// An explainer for GenerateOptions / SchedulerOptions replaying on `backend` (the one that serves,
// so a CUDA-placed model is replayed on the GPU); `model` and `backend` must outlive it.
runtime::NonFiniteExplainer make_replay_explainer(const model::deepseek_v4::Model& model, ops::Backend& backend,
                                                  ops::LinearPolicy policy,
                                                  model::deepseek_v4::ForwardOptions forward,
                                                  int64_t prefill_chunk = 0);
// The same replaying on a fresh CPU backend each time; `model` must outlive it.
runtime::NonFiniteExplainer make_replay_explainer(const model::deepseek_v4::Model& model, ops::LinearPolicy policy,
                                                  model::deepseek_v4::ForwardOptions forward,
                                                  int64_t prefill_chunk = 0);

}  // namespace clawmine::diag
