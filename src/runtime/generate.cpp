#include "runtime/generate.h"

#include <algorithm>

namespace clawmine::runtime {

using model::deepseek_v4::SequenceCache;

Buffer chunked_logits(const model::deepseek_v4::Model& model, ops::Backend& backend, const std::vector<int32_t>& ids,
                      int64_t chunk, const model::deepseek_v4::ForwardOptions& options) {
  const int64_t T = static_cast<int64_t>(ids.size()), V = model.config().vocab_size;
  CLAWMINE_CHECK(T > 0, "no token ids given");
  if (chunk <= 0) chunk = T;
  SequenceCache cache = model.new_cache();
  model::deepseek_v4::ForwardOptions every_position = options;
  every_position.all_logits = true;
  Buffer all(DType::kF32, {T, V});
  for (int64_t begin = 0; begin < T; begin += chunk) {
    const int64_t end = std::min(T, begin + chunk);
    const std::vector<int32_t> piece(ids.begin() + begin, ids.begin() + end);
    Buffer logits = model.forward(backend, cache, piece, every_position);
    std::copy(logits.f32(), logits.f32() + (end - begin) * V, all.f32() + begin * V);
  }
  return all;
}

int32_t greedy_id(const model::deepseek_v4::GreedyToken& g) {
  if (g.non_finite_at >= 0) throw non_finite_logits(g.non_finite_at, g.non_finite_value);
  return g.id;
}

std::vector<int32_t> generate(const model::deepseek_v4::Model& model, ops::Backend& backend,
                              const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token) {
  CLAWMINE_CHECK(!prompt.empty(), "the prompt has no tokens");
  const int64_t V = model.config().vocab_size;
  SequenceCache cache = model.new_cache();
  Sampler sampler(options.sampling);
  // Only the last position is ever sampled: the head runs for that row alone.
  model::deepseek_v4::ForwardOptions last_only = options.forward;
  last_only.all_logits = false;
  const int64_t n = static_cast<int64_t>(prompt.size());
  const int64_t chunk = options.prefill_chunk > 0 ? options.prefill_chunk : n;
  // Greedy without penalties needs no logits on the host: the argmax runs on the backend and only
  // the id comes back (Model::forward_greedy; ties to the lowest id as the sampler's; a non-finite
  // row refused with the sampler's error).
  const bool on_backend = greedy_without_penalties(options.sampling);
  auto greedy = [&](const std::vector<int32_t>& ids) {
    return greedy_id(model.forward_greedy(backend, cache, ids, last_only));
  };
  Buffer logits;
  std::vector<int32_t> out;
  try {
    int32_t next = -1;  // on_backend: the token of the last forward
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const std::vector<int32_t> piece(prompt.begin() + begin, prompt.begin() + std::min(n, begin + chunk));
      if (on_backend && begin + chunk >= n) {
        next = greedy(piece);
      } else {
        logits = model.forward(backend, cache, piece, last_only);
      }
    }
    for (int64_t i = 0; on_backend && i < options.max_tokens; ++i) {
      out.push_back(next);
      if (on_token) on_token(next);
      if (options.stop_at_eos && next == model.config().eos_token_id) break;
      if (i + 1 < options.max_tokens) next = greedy({next});
    }
    for (int64_t i = 0; !on_backend && i < options.max_tokens; ++i) {
      const int64_t last = logits.view().dim(0) - 1;
      const int32_t id = sampler.sample(logits.f32() + last * V, V);
      out.push_back(id);
      if (on_token) on_token(id);
      if (options.stop_at_eos && id == model.config().eos_token_id) break;
      if (i + 1 < options.max_tokens) logits = model.forward(backend, cache, {id}, last_only);
    }
  } catch (const Error& e) {
    // The guard: a non-finite step is never sampled; the explainer names the op that went non-finite.
    if (!options.explain_non_finite) throw;
    const std::string why = options.explain_non_finite(prompt, out);
    if (why.empty()) throw;
    throw NonFiniteLogits(str_cat(e.what(), "; ", why));
  }
  return out;
}

}  // namespace clawmine::runtime
