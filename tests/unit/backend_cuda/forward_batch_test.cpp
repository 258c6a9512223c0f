// Model::forward_batch on CUDA: B sequences at different positions decoded in one forward per
// step give each sequence what forward() gives it alone (F32 activations: within 1e-4 relative,
// the batched linears sum the same products in tiles of more tokens; BF16: within the one-ulp
// divergence of a BF16 rounding, median-row cosine >= 0.9999), and the batched step recorded as a
// CUDA graph replays bit for bit what eager launches give. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "unit/backend_cuda/cuda_test_util.h"
#include "unit/model/batch_run.h"

namespace clawmine::model::deepseek_v4 {
namespace {

// The median over rows of V logits of the cosine between a and b.
double median_cosine(const std::vector<float>& a, const std::vector<float>& b, int64_t V) {
  std::vector<double> cos;
  for (size_t r = 0; r + static_cast<size_t>(V) <= a.size(); r += static_cast<size_t>(V)) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double x = a[r + static_cast<size_t>(v)], y = b[r + static_cast<size_t>(v)];
      ab += x * y, aa += x * x, bb += y * y;
    }
    cos.push_back(ab / std::sqrt(aa * bb));
  }
  std::nth_element(cos.begin(), cos.begin() + static_cast<long>(cos.size() / 2), cos.end());
  return cos[cos.size() / 2];
}

class CudaForwardBatch : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (backend::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaForwardBatch, MatchesOneSequenceAtATimeAndGraphsAreBitIdentical) {
  const std::vector<int> prompts = {3, 11, 20, 33};  // windows filling during the steps, entries completing
  const int steps = 22;
  for (const DType act : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(act == DType::kF32 ? "F32 activations" : "BF16 activations");
    std::vector<std::vector<float>> eager_batch;
    {
      auto be = test::model_cuda_backend(act, false);
      auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
      model->place(*be);
      const Logits one = decode(*model, *be, prompts, steps, false);
      const Logits batch = decode(*model, *be, prompts, steps, true);
      const int64_t V = model->config().vocab_size;
      for (size_t s = 0; s < prompts.size(); ++s) {
        SCOPED_TRACE(str_cat("sequence ", s));
        for (float v : batch.logits[s]) ASSERT_TRUE(std::isfinite(v));
        if (act == DType::kF32) {
          EXPECT_LE(test::max_rel_diff(batch.logits[s], one.logits[s]), 1e-4);
        } else {
          EXPECT_GE(median_cosine(batch.logits[s], one.logits[s], V), 0.9999);
        }
      }
      eager_batch = batch.logits;
    }
    auto be = test::model_cuda_backend(act, true);
    auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
    model->place(*be);
    const Logits graphed = decode(*model, *be, prompts, steps, true);
    for (size_t s = 0; s < prompts.size(); ++s)
      EXPECT_EQ(std::memcmp(graphed.logits[s].data(), eager_batch[s].data(), eager_batch[s].size() * sizeof(float)),
                0)
          << "sequence " << s << ": graphs on and off differ";
  }
}

// Greedy decoding with the argmax on the GPU (argmax_rows inside the step graph): the ids equal
// the first maximum of the downloaded logits, one sequence and a batch, graphs on and off.
TEST_P(CudaForwardBatch, GreedyOnTheGpuEqualsTheLogitsArgmax) {
  for (const bool graphs : {false, true}) {
    SCOPED_TRACE(graphs ? "graphs on" : "graphs off");
    auto be = test::model_cuda_backend(DType::kBF16, graphs);
    auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
    model->place(*be);
    expect_greedy_matches_logits(*model, *be, {3, 11, 20, 33}, 22, false);
    expect_greedy_matches_logits(*model, *be, {3, 11, 20, 33}, 22, true);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaForwardBatch, ::testing::Values("tiny-a", "tiny-c", "tiny-a-fp8"),
                         fixture_test_name);

}  // namespace
}  // namespace clawmine::model::deepseek_v4
