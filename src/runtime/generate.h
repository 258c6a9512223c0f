// The plain generation loop for one sequence: prefill the prompt (in chunks), then decode one
// token at a time until EOS or max_tokens. The server's batching scheduler builds on the same
// Model::forward; this loop serves the CLI and tests.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "runtime/non_finite_hook.h"
#include "runtime/sampler.h"

namespace clawmine::runtime {

struct GenerateOptions {
  int64_t max_tokens = 32;
  int64_t prefill_chunk = 0;  // 0: the whole prompt in one pass
  bool stop_at_eos = true;
  SamplingParams sampling;
  model::deepseek_v4::ForwardOptions forward;
  NonFiniteExplainer explain_non_finite;  // appended to the NonFiniteLogits error when set
};

// The id of a token the backend took (Model::forward_greedy); a non-finite row throws
// non_finite_logits, as the sampler does.
int32_t greedy_id(const model::deepseek_v4::GreedyToken& g);

// Returns the generated ids (EOS included when it ends the sequence). on_token, if set, sees each id as it comes.
std::vector<int32_t> generate(const model::deepseek_v4::Model& model, ops::Backend& backend,
                              const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token = {});

// All-position logits [T, vocab] of ids fed through the cache chunk tokens at a time (0: one pass).
Buffer chunked_logits(const model::deepseek_v4::Model& model, ops::Backend& backend, const std::vector<int32_t>& ids,
                      int64_t chunk, const model::deepseek_v4::ForwardOptions& options);

}  // namespace clawmine::runtime
