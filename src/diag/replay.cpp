#include "diag/replay.h"

#include <algorithm>

#include "core/error.h"
#include "diag/forwarding_backend.h"
#include "diag/trace.h"

namespace clawmine::diag {

std::optional<NonFiniteFinding> replay_first_non_finite(const model::deepseek_v4::Model& model,
                                                        ops::Backend& backend, const ops::LinearPolicy& policy,
                                                        const model::deepseek_v4::ForwardOptions& forward,
                                                        const std::vector<int32_t>& prompt,
                                                        const std::vector<int32_t>& generated,
                                                        int64_t prefill_chunk) {
  const LinearPolicyRestore restore(backend);
  Tracer tracer(backend);
  tracer.set_linear_policy(policy);
  auto cache = model.new_cache();  // after the tracer: released through it first
  const int64_t n = static_cast<int64_t>(prompt.size());
  const int64_t chunk = prefill_chunk > 0 ? prefill_chunk : std::max<int64_t>(n, 1);
  try {
    for (int64_t b = 0; b < n && !tracer.first_non_finite(); b += chunk)
      model.forward(tracer, cache, std::vector<int32_t>(prompt.begin() + b, prompt.begin() + std::min(n, b + chunk)),
                    forward);
    for (size_t i = 0; i < generated.size() && !tracer.first_non_finite(); ++i)
      model.forward(tracer, cache, {generated[i]}, forward);
  } catch (const Error&) {
    // An op refusing NaN input (top-k) stops the replay; the finding is already recorded.
    if (!tracer.first_non_finite()) throw;
  }
  return tracer.first_non_finite();
}

std::optional<NonFiniteFinding> replay_first_non_finite(const model::deepseek_v4::Model& model,
                                                        const ops::LinearPolicy& policy,
                                                        const model::deepseek_v4::ForwardOptions& forward,
                                                        const std::vector<int32_t>& prompt,
                                                        const std::vector<int32_t>& generated,
                                                        int64_t prefill_chunk) {
  auto cpu = ops::make_cpu_backend();
  return replay_first_non_finite(model, *cpu, policy, forward, prompt, generated, prefill_chunk);
}

namespace {

std::string answer(const std::optional<NonFiniteFinding>& f) {
  return f ? str_cat("first non-finite op: ", f->message) : std::string();
}

}  // namespace

runtime::NonFiniteExplainer make_replay_explainer(const model::deepseek_v4::Model& model, ops::Backend& backend,
                                                  ops::LinearPolicy policy,
                                                  model::deepseek_v4::ForwardOptions forward,
                                                  int64_t prefill_chunk) {
  return [&model, &backend, policy, forward, prefill_chunk](const std::vector<int32_t>& prompt,
                                                             const std::vector<int32_t>& generated) {
    return answer(replay_first_non_finite(model, backend, policy, forward, prompt, generated, prefill_chunk));
  };
}

runtime::NonFiniteExplainer make_replay_explainer(const model::deepseek_v4::Model& model, ops::LinearPolicy policy,
                                                  model::deepseek_v4::ForwardOptions forward, int64_t prefill_chunk) {
  return [&model, policy, forward, prefill_chunk](const std::vector<int32_t>& prompt,
                                                   const std::vector<int32_t>& generated) {
    return answer(replay_first_non_finite(model, policy, forward, prompt, generated, prefill_chunk));
  };
}

}  // namespace clawmine::diag
