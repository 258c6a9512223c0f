// Shared by the CUDA step-graph tests: a model's decode steps on a CUDA backend of given graph
// options, every step's logits kept in order with the backend's graph counts.
#pragma once

#include <functional>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"

namespace clawmine::model::deepseek_v4 {

struct StepRun {
  std::vector<float> logits;  // every kept step's rows, in order
  backend::cuda::GraphStats stats;
};

// `steps(model, backend, keep)` runs on a fresh CUDA backend (F32 activations, 30% of the device's
// memory) with `o`'s graph switches and the fixture `model_dir` (under tests/fixtures) placed on it;
// keep(out) appends a step's logits.
inline StepRun run_steps_on_cuda(
    backend::cuda::CudaOptions o, const char* model_dir,
    const std::function<void(Model&, ops::Backend&, const std::function<void(const Buffer&)>&)>& steps) {
  o.memory_fraction = 0.3;
  o.act_dtype = DType::kF32;
  auto be = backend::cuda::make_cuda_backend(o);
  auto model = Model::load(test::fixture_dir(model_dir));
  model->place(*be);
  StepRun r;
  steps(*model, *be,
        [&](const Buffer& out) { r.logits.insert(r.logits.end(), out.f32(), out.f32() + out.view().numel()); });
  r.stats = backend::cuda::graph_stats(*be);
  return r;
}

}  // namespace clawmine::model::deepseek_v4
