// The non-finite guard's explanation hook. When a logit row holds NaN/Inf the sequence fails
// (runtime::NonFiniteLogits) instead of sampling. If an explainer is set it is also asked when a
// forward pass throws (a backend op that refuses its input): a non-empty answer makes that
// failure a guard trip too. The answer is appended to the error. diag::make_replay_explainer
// (diag/replay.h) replays the sequence's tokens through the numerics trace on a fresh cache and
// names the first non-finite op, or answers "" when the replay stays finite.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace clawmine::runtime {

// prompt: the request's prompt; generated: the tokens sampled and fed back before the bad step.
using NonFiniteExplainer =
    std::function<std::string(const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated)>;

}  // namespace clawmine::runtime
