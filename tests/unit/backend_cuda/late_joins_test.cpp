// CudaOptions::late_joins (ops::Backend::late_joins): a one-token decode step that completes no
// window of a layer's compressor records its attention without waiting for the compressor's
// branch, which joins after the attention's output. The logits equal those of eager launches bit
// for bit over decode steps that complete no window, a CSA window only and an HCA window too
// (tiny-b: rates 4 and 16), and the two kinds of step (completing a window or not) are recorded
// once each and then replayed (two graphs, not one per change of kind). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "unit/backend_cuda/step_run.h"
#include "unit/model/batch_run.h"

namespace clawmine::model::deepseek_v4 {
namespace {

StepRun run(bool graphs, bool late) {
  backend::cuda::CudaOptions o;
  o.graphs = graphs;
  o.late_joins = late;
  return run_steps_on_cuda(o, "models/tiny-b", [](Model& model, ops::Backend& be, const auto& keep) {
    const ForwardOptions fo{.official_qdq = true, .all_logits = false};
    SequenceCache a = model.new_cache();
    model.forward(be, a, test_ids(30), fo);
    // Positions 30..69: windows of 4 complete at 31, 35, ...; of 16 at 31, 47, 63.
    for (int k = 0; k < 40; ++k) keep(model.forward(be, a, {token(0, k)}, fo));
  });
}

TEST(CudaLateJoins, RecordsTwoStepKindsAndMatchesEager) {
  if (backend::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const StepRun eager = run(false, false);
  const StepRun joined = run(true, false);
  const StepRun late = run(true, true);
  for (float v : eager.logits) ASSERT_TRUE(std::isfinite(v));
  ASSERT_EQ(late.logits.size(), eager.logits.size());
  EXPECT_EQ(std::memcmp(joined.logits.data(), eager.logits.data(), eager.logits.size() * sizeof(float)), 0)
      << "recorded steps differ from eager launches";
  EXPECT_EQ(std::memcmp(late.logits.data(), eager.logits.data(), eager.logits.size() * sizeof(float)), 0)
      << "recorded steps with late joins differ from eager launches";
  // One key all along without late joins; with them, the steps completing no window and those
  // completing one each recorded once.
  EXPECT_EQ(joined.stats.instantiated + joined.stats.updated, 1);
  EXPECT_EQ(late.stats.instantiated + late.stats.updated, 2);
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
