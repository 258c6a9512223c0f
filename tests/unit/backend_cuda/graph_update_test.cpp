// CudaOptions::graph_update: a decode step recorded after its owner's previous graph was retired
// is written into that executable graph (cudaGraphExecUpdate) where the topology matches. The
// logits equal those of eager launches bit for bit, for one sequence across an entry store's
// growth (a new cache layout) and for a batch whose second member is replaced (a new key, the same
// owner), and at least one step took the update path. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "unit/model/batch_run.h"

namespace clawmine::model::deepseek_v4 {
namespace {

struct StepRun {
  std::vector<float> logits;  // every step's rows, in order
  backend::cuda::GraphStats stats;
};

StepRun run(bool graphs, bool update) {
  backend::cuda::CudaOptions o;
  o.memory_fraction = 0.3;
  o.act_dtype = DType::kF32;
  o.graphs = graphs;
  o.graph_update = update;
  auto be = backend::cuda::make_cuda_backend(o);
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  model->place(*be);
  const ForwardOptions fo{.official_qdq = true, .all_logits = false};
  const int64_t V = model->config().vocab_size;
  StepRun r;
  auto keep = [&](const Buffer& out) { r.logits.insert(r.logits.end(), out.f32(), out.f32() + out.view().numel()); };

  // One sequence from position 250: tiny-a's CSA stores (rate 4) grow from 64 to 128 rows at 256.
  SequenceCache a = model->new_cache();
  model->forward(*be, a, test_ids(250), fo);
  for (int k = 0; k < 12; ++k) keep(model->forward(*be, a, {token(0, k)}, fo));

  // A batch {b, c}, then {b, d}: the owner b stays, the key changes with the second member.
  std::vector<SequenceCache> caches;
  for (int s = 0; s < 3; ++s) caches.push_back(model->new_cache());
  for (int s = 0; s < 3; ++s) {
    std::vector<int32_t> ids = test_ids(20 + 10 * s);
    ids.erase(ids.begin(), ids.begin() + s);
    model->forward(*be, caches[static_cast<size_t>(s)], ids, fo);
  }
  for (int second : {1, 2}) {
    for (int k = 0; k < 4; ++k) {
      const Buffer out =
          model->forward_batch(*be, {&caches[0], &caches[static_cast<size_t>(second)]},
                               {token(0, 20 + k), token(static_cast<size_t>(second), 20 + k)}, fo);
      EXPECT_EQ(out.view().shape, (Shape{2, V}));
      keep(out);
    }
  }
  r.stats = backend::cuda::graph_stats(*be);
  return r;
}

TEST(CudaGraphUpdate, RecordsIntoTheRetiredGraphAndMatchesEager) {
  if (backend::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const StepRun eager = run(false, false);
  const StepRun updated = run(true, true);
  for (float v : eager.logits) ASSERT_TRUE(std::isfinite(v));
  ASSERT_EQ(updated.logits.size(), eager.logits.size());
  EXPECT_EQ(std::memcmp(updated.logits.data(), eager.logits.data(), eager.logits.size() * sizeof(float)), 0)
      << "graphs recorded into retired graphs differ from eager launches";
  EXPECT_GE(updated.stats.updated, 1) << "no step took the update path (" << updated.stats.instantiated
                                      << " instantiated): the retired graphs' topology differed";
  EXPECT_EQ(eager.stats.updated + eager.stats.instantiated, 0);
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
