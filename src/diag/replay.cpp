#include "diag/replay.h"

#include <algorithm>

#include "core/error.h"
#include "diag/trace.h"

namespace clawmine::diag {

std::optional<NonFiniteFinding> replay_first_non_finite(const model::deepseek_v4::Model& model,
                                                        const ops::LinearPolicy& policy,
                                                        const model::deepseek_v4::ForwardOptions& forward,
                                                        const std::vector<int32_t>& prompt,
                                                        const std::vector<int32_t>& generated,
                                                        int64_t prefill_chunk) {
  auto cpu = ops::make_cpu_backend();
  cpu->set_linear_policy(policy);
  Tracer tracer(*cpu);
  auto cache = model.new_cache();
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

runtime::NonFiniteExplainer make_replay_explainer(const model::deepseek_v4::Model& model, ops::LinearPolicy policy,
                                                  model::deepseek_v4::ForwardOptions forward, int64_t prefill_chunk) {
  return [&model, policy, forward, prefill_chunk](const std::vector<int32_t>& prompt,
                                                   const std::vector<int32_t>& generated) -> std::string {
    const auto f = replay_first_non_finite(model, policy, forward, prompt, generated, prefill_chunk);
    if (!f) return "";
    return str_cat("first non-finite op: ", f->message);
  };
}

}  // namespace clawmine::diag
