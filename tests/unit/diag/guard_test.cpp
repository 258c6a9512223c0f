// The runtime guard: a checkpoint whose embedding row of one token is NaN generates fine until
// that token is sampled and fed back; then the request fails with the locator's finding (naming
// the op), a guard trip is counted, and the next request on the same scheduler succeeds.
#include <gtest/gtest.h>

#include <limits>

#include "diag/replay.h"
#include "runtime/generate.h"
#include "runtime/scheduler.h"
#include "support/test_support.h"
#include "unit/diag/diag_fixtures.h"

namespace clawmine::diag {
namespace {

using model::deepseek_v4::Model;

const std::vector<int32_t> kPrompt = {5, 17, 42, 99, 3, 250, 7};

// Poisons the embedding row of the first token tiny-a generates greedily after kPrompt.
struct PoisonedModel {
  test::TempDir dir;
  std::unique_ptr<Model> model;
  int32_t bad = -1;
  PoisonedModel() {
    test::copy_model("tiny-a", dir.path());
    auto clean = Model::load(dir.path());
    auto cpu = ops::make_cpu_backend(2);
    runtime::GenerateOptions g;
    g.max_tokens = 1;
    g.sampling.temperature = 0;
    bad = runtime::generate(*clean, *cpu, kPrompt, g)[0];
    const int64_t D = clean->config().hidden_size;
    clean.reset();
    test::patch_tensor(dir.path(), "embed.weight", bad * D, D, std::numeric_limits<float>::quiet_NaN());
    model = Model::load(dir.path());
  }
};

TEST(Guard, GenerateFailsWithTheLocatorsFinding) {
  PoisonedModel pm;
  ASSERT_EQ(std::count(kPrompt.begin(), kPrompt.end(), pm.bad), 0) << "pick another prompt";
  auto cpu = ops::make_cpu_backend(2);
  runtime::GenerateOptions g;
  g.max_tokens = 4;
  g.sampling.temperature = 0;
  g.explain_non_finite = make_replay_explainer(*pm.model, {}, g.forward);
  std::vector<int32_t> seen;
  try {
    runtime::generate(*pm.model, *cpu, kPrompt, g, [&](int32_t id) { seen.push_back(id); });
    FAIL() << "a non-finite step was sampled";
  } catch (const runtime::NonFiniteLogits& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("first non-finite op: embed"), std::string::npos) << msg;
    EXPECT_NE(msg.find("token id " + std::to_string(pm.bad)), std::string::npos) << msg;
  }
  EXPECT_EQ(seen, std::vector<int32_t>{pm.bad});  // the first token came out, the poisoned step did not
}

// The explainer replays on the scheduler's own backend (as serving on a GPU must: the model is
// placed there), between the scheduler's steps.
TEST(Guard, SchedulerFailsOnlyThatRequestAndKeepsServing) {
  PoisonedModel pm;
  runtime::SchedulerOptions so;
  auto backend = ops::make_cpu_backend(2);
  so.explain_non_finite = make_replay_explainer(*pm.model, *backend, {}, so.forward, so.prefill_chunk);
  runtime::Scheduler sched(*pm.model, std::move(backend), so);
  auto drain = [](runtime::SequenceHandle& h) {
    std::vector<runtime::SampledToken> out, all;
    while (h.take(out, std::chrono::milliseconds(200))) all.insert(all.end(), out.begin(), out.end()), out.clear();
    return all;
  };
  runtime::SequenceRequest bad;
  bad.prompt = kPrompt;
  bad.max_tokens = 4;
  bad.sampling.temperature = 0;
  auto h1 = sched.submit({bad})[0];
  drain(*h1);
  EXPECT_EQ(h1->finish_reason(), runtime::FinishReason::kError);
  EXPECT_TRUE(h1->error_non_finite());
  EXPECT_NE(h1->error().find("first non-finite op: embed"), std::string::npos) << h1->error();
  EXPECT_EQ(sched.stats().non_finite_trips, 1);

  runtime::SequenceRequest good;
  good.prompt = {1, 2, 3};
  good.max_tokens = 1;
  good.sampling.temperature = 0;
  auto h2 = sched.submit({good})[0];
  const auto tokens = drain(*h2);
  EXPECT_EQ(h2->finish_reason(), runtime::FinishReason::kLength) << h2->error();
  EXPECT_EQ(tokens.size(), 1u);
}

// Decoded together with another request (batch_decode): the poisoned sequence's NaN stays in its
// row of the batched forward, so it fails alone and the other request finishes.
TEST(Guard, BatchedDecodeFailsOnlyThatRequest) {
  PoisonedModel pm;
  runtime::SchedulerOptions so;
  so.batch_decode = true;
  auto backend = ops::make_cpu_backend(2);
  so.explain_non_finite = make_replay_explainer(*pm.model, *backend, {}, so.forward, so.prefill_chunk);
  runtime::Scheduler sched(*pm.model, std::move(backend), so);
  runtime::SequenceRequest bad, good;
  bad.prompt = kPrompt;
  bad.max_tokens = 4;
  bad.sampling.temperature = 0;
  good.prompt = {1, 2, 3};
  good.max_tokens = 6;
  good.sampling.temperature = 0;
  auto handles = sched.submit({bad, good});
  std::vector<runtime::SampledToken> out;
  while (handles[0]->take(out, std::chrono::milliseconds(200))) out.clear();
  size_t good_tokens = 0;
  while (handles[1]->take(out, std::chrono::milliseconds(200))) good_tokens += out.size(), out.clear();
  EXPECT_EQ(handles[0]->finish_reason(), runtime::FinishReason::kError);
  EXPECT_TRUE(handles[0]->error_non_finite());
  EXPECT_NE(handles[0]->error().find("first non-finite op: embed"), std::string::npos) << handles[0]->error();
  EXPECT_EQ(handles[1]->finish_reason(), runtime::FinishReason::kLength) << handles[1]->error();
  EXPECT_EQ(good_tokens, 6u);
  EXPECT_EQ(sched.stats().non_finite_trips, 1);
}

}  // namespace
}  // namespace clawmine::diag
