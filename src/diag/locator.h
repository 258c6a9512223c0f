// The first-non-finite locator's finding and the explanations it builds for the op kinds that can
// create NaN/Inf from finite inputs: a linear whose activation block scales leave E4M3's range
// (non-saturating casts) or whose weights hold NaN/Inf, and an embedding row that is non-finite.
// The trace (trace.h) calls these when an op's output first goes non-finite.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "diag/tensor_stats.h"
#include "ops/backend.h"

namespace clawmine::diag {

struct NonFiniteFinding {
  int64_t seq = 0;          // op index in execution order
  int64_t forward = 0;      // forward pass index (0 = first)
  std::string op_name;      // "layers.0.attn.fused_wqa_wkv"
  std::string op;           // "linear"
  std::string path;         // linears: "W4A4 static (nvfp4, non-saturating)"
  bool inputs_finite = true;  // false: the non-finite value came from outside the traced ops
  std::vector<std::pair<std::string, TensorStats>> inputs;
  TensorStats output;
  std::string cause;        // "activation block scales reach 5.3e4 > 448 ..."
  std::string message;      // the one line for users: "<op_name> (<path/scales>): <cause>"

  nlohmann::json to_json() const;
};

// Fills cause/message for a linear (x [rows, w.in_features]) given the policy it ran under.
// Host data: x, and w decodable on the host (HostLinearWeight for a placed weight).
void explain_linear(NonFiniteFinding& f, const ops::LinearPolicy& policy, const ops::LinearWeight& w, const float* x,
                    int64_t rows);
// Fills cause/message for an embedding whose output out [T, D] (host F32) went non-finite for ids.
void explain_embed(NonFiniteFinding& f, const std::vector<int32_t>& ids, const TensorView& out);
// Fills a generic cause/message from the stats (any other op).
void explain_generic(NonFiniteFinding& f);

// "%.3g"-style short number for messages.
std::string short_num(double v);

}  // namespace clawmine::diag
