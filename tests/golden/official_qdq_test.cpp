// --official-qdq on (the default): the FP8 round trip on KV nope dims and compressed entries
// and Hadamard + FP4 on the indexer change the logits a little, never make them non-finite,
// and chunking still does not matter (the round trips are per row, so state is chunk-free).
#include <gtest/gtest.h>

#include <cmath>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "runtime/generate.h"
#include "support/test_support.h"

namespace clawmine {
namespace {

using model::deepseek_v4::ForwardOptions;
using model::deepseek_v4::Model;

std::vector<float> run(const Model& m, ops::Backend& be, const std::vector<int32_t>& ids, int64_t chunk, bool qdq) {
  ForwardOptions o;
  o.official_qdq = qdq;
  Buffer b = runtime::chunked_logits(m, be, ids, chunk, o);
  return {b.f32(), b.f32() + b.view().numel()};
}

TEST(OfficialQdq, ChangesLogitsSlightlyAndStaysFiniteAndChunkFree) {
  auto model = Model::load(test::fixture_dir("models/tiny-c"));
  auto be = ops::make_cpu_backend();
  std::vector<int32_t> ids;
  for (int i = 0; i < 97; ++i) ids.push_back((i * 37 + 11) % 510 + 2);
  const auto off = run(*model, *be, ids, 0, false);
  const auto on = run(*model, *be, ids, 0, true);
  for (float v : on) ASSERT_TRUE(std::isfinite(v));
  const double diff = test::max_rel_diff(on, off);
  EXPECT_GT(diff, 1e-6);  // the round trips are really applied
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < on.size(); ++i) dot += on[i] * off[i], na += on[i] * on[i], nb += off[i] * off[i];
  EXPECT_GT(dot / std::sqrt(na * nb), 0.9);  // ...but they are small perturbations
  EXPECT_LE(test::max_rel_diff(run(*model, *be, ids, 5, true), on), 1e-5);
}

}  // namespace
}  // namespace clawmine
