// Which activation transform a linear gets under a LinearPolicy (ops/backend.h): none for dense
// weights and the A16 paths; FP8 per-128 for FP8-block/MXFP4 under W8A8; NVFP4 per-16 under W4A4
// with a static (1/input_scale) or dynamic (2688/amax per row) global scale, `auto` choosing
// static only for a present and trusted input_scale. apply_act_policy transforms token rows.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace clawmine::backend::cpu {

enum class ActPath { kNone, kFp8Block128, kNvfp4Static, kNvfp4Dynamic };

struct ActTransform {
  ActPath path = ActPath::kNone;
  float static_global = 0.0f;  // kNvfp4Static: g = 1/input_scale
  bool saturate = true;
};
const char* act_path_name(ActPath p);  // "A16", "A8 (FP8 per 128)", "A4 static", "A4 dynamic"

// Resolves the transform for w; kNvfp4Static without a finite positive input_scale is an
// Error naming w.name.
ActTransform resolve_act_transform(const ops::LinearPolicy& policy, const ops::LinearWeight& w);

// x [rows, n] F32. Returns x itself (kNone) or scratch, resized and filled with the transformed
// rows; rows are split over the pool (each row by one thread, so any thread count is bit-identical).
const float* apply_act_transform(const ActTransform& t, const float* x, int64_t rows, int64_t n,
                                 std::vector<float>& scratch, ThreadPool& pool);

}  // namespace clawmine::backend::cpu
