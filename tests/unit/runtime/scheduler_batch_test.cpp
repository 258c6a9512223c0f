// Scheduler with batch_decode: the running sequences past their prompt take their decode token
// together (Model::forward_batch). On the CPU every request gets the tokens it gets alone (greedy
// and seeded sampling), while requests join late, finish at different lengths and get cancelled,
// in fewer forwards than one per sequence and step.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "diag/forwarding_backend.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "runtime/scheduler.h"
#include "support/test_support.h"

namespace clawmine::runtime {
namespace {

using model::deepseek_v4::Model;

std::vector<int32_t> drain(SequenceHandle& h) {
  std::vector<SampledToken> out;
  std::vector<int32_t> ids;
  while (h.take(out, std::chrono::milliseconds(200))) {
    for (const SampledToken& t : out) ids.push_back(t.id);
    out.clear();
  }
  return ids;
}

std::vector<SequenceRequest> requests() {
  std::vector<SequenceRequest> r;
  for (int i = 0; i < 6; ++i) {
    SequenceRequest q;
    for (int j = 0; j < 3 + 5 * i; ++j) q.prompt.push_back((j * 53 + i * 7 + 3) % 500 + 2);
    q.max_tokens = 6 + 4 * i;  // finish at different steps
    q.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;  // greedy and seeded sampling
    q.sampling.seed = 1234 + static_cast<uint64_t>(i);
    q.top_logprobs = i == 3 ? 2 : 0;
    r.push_back(q);
  }
  return r;
}

TEST(SchedulerBatchDecode, EveryRequestGetsItsTokensAloneInFewerForwards) {
  auto model = Model::load(test::fixture_dir("models/tiny-c"));
  const std::vector<SequenceRequest> reqs = requests();
  // Alone: one scheduler per request, one forward per step.
  std::vector<std::vector<int32_t>> alone;
  for (const SequenceRequest& r : reqs) {
    SchedulerOptions so;
    so.prefill_chunk = 8;
    Scheduler s(*model, ops::make_cpu_backend(2), so);
    alone.push_back(drain(*s.submit({r})[0]));
  }
  for (const int threads : {1, 4}) {  // the batched draws one after another, or on four threads
    SCOPED_TRACE(testing::Message() << threads << " sample threads");
    SchedulerOptions so;
    so.prefill_chunk = 8;  // prompts of 3..28 tokens: prefill and decode steps mix
    so.batch_decode = true;
    so.sample_threads = threads;
    Scheduler s(*model, ops::make_cpu_backend(2), so);
    std::vector<SequenceRequest> first(reqs.begin(), reqs.begin() + 4), late(reqs.begin() + 4, reqs.end());
    auto handles = s.submit(first);
    std::vector<std::vector<int32_t>> got;
    got.push_back(drain(*handles[0]));  // the others keep decoding meanwhile; then two join late
    for (auto& h : s.submit(late)) handles.push_back(h);
    for (size_t i = 1; i < handles.size(); ++i) got.push_back(drain(*handles[i]));
    int64_t tokens = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(got[i], alone[i]) << "request " << i;
      EXPECT_EQ(handles[i]->finish_reason(), FinishReason::kLength) << "request " << i << ": " << handles[i]->error();
      tokens += static_cast<int64_t>(got[i].size());
    }
    // One forward per prefill chunk, and per decode step one for all sequences decoding then.
    EXPECT_LT(s.stats().forwards, tokens);
  }
}

// Counts the argmax_rows calls: a step that took its tokens on the backend.
class CountingArgmax : public diag::ForwardingBackend {
 public:
  CountingArgmax(std::unique_ptr<ops::Backend> inner, int64_t* calls)
      : diag::ForwardingBackend(*inner), owned_(std::move(inner)), calls_(calls) {}
  void argmax_rows(const TensorView& values, const TensorView& out) override {
    ++*calls_;
    diag::ForwardingBackend::argmax_rows(values, out);
  }

 private:
  std::unique_ptr<ops::Backend> owned_;
  int64_t* calls_;
};

// Greedy requests that want no logprobs take their tokens on the backend (forward_greedy /
// forward_batch_greedy): the same ids as the host sampler gives with logprobs on, one sequence at
// a time and batched, also when a batch mixes both kinds (then the batch takes the logits).
TEST(SchedulerBatchDecode, GreedyWithoutLogprobsTakesItsTokensOnTheBackend) {
  auto model = Model::load(test::fixture_dir("models/tiny-c"));
  std::vector<SequenceRequest> with, without;
  for (int i = 0; i < 4; ++i) {
    SequenceRequest q;
    for (int j = 0; j < 3 + 6 * i; ++j) q.prompt.push_back((j * 31 + i * 11 + 5) % 500 + 2);
    q.max_tokens = 5 + 3 * i;
    q.sampling.temperature = 0.0f;
    with.push_back(q);
    q.logprobs = false;
    without.push_back(q);
  }
  for (const bool batch : {false, true}) {
    SCOPED_TRACE(batch ? "batch_decode" : "one sequence a step");
    SchedulerOptions so;
    so.prefill_chunk = 8;
    so.batch_decode = batch;
    int64_t host_calls = 0, backend_calls = 0, mixed_calls = 0;
    std::vector<std::vector<int32_t>> ref, got, mixed;
    {
      Scheduler s(*model, std::make_unique<CountingArgmax>(ops::make_cpu_backend(2), &host_calls), so);
      for (auto& h : s.submit(with)) ref.push_back(drain(*h));
    }
    {
      Scheduler s(*model, std::make_unique<CountingArgmax>(ops::make_cpu_backend(2), &backend_calls), so);
      for (auto& h : s.submit(without)) got.push_back(drain(*h));
    }
    {
      std::vector<SequenceRequest> both = {with[0], without[1], with[2], without[3]};
      Scheduler s(*model, std::make_unique<CountingArgmax>(ops::make_cpu_backend(2), &mixed_calls), so);
      for (auto& h : s.submit(both)) mixed.push_back(drain(*h));
    }
    EXPECT_EQ(got, ref);
    EXPECT_EQ(mixed, ref);
    EXPECT_EQ(host_calls, 0);
    EXPECT_GT(backend_calls, 0);
    EXPECT_GT(mixed_calls, 0);  // the greedy ones' prefill steps at least
  }
}

TEST(SchedulerBatchDecode, ACancelledRequestLeavesTheOthersRunning) {
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  SchedulerOptions so;
  so.batch_decode = true;
  Scheduler s(*model, ops::make_cpu_backend(2), so);
  std::vector<SequenceRequest> reqs = requests();
  reqs.resize(3);
  reqs[1].max_tokens = 500;
  auto handles = s.submit(reqs);
  handles[1]->cancel();
  const std::vector<int32_t> a = drain(*handles[0]), c = drain(*handles[2]);
  drain(*handles[1]);
  EXPECT_EQ(handles[1]->finish_reason(), FinishReason::kCancelled);
  EXPECT_EQ(handles[0]->finish_reason(), FinishReason::kLength);
  EXPECT_EQ(handles[2]->finish_reason(), FinishReason::kLength);
  EXPECT_EQ(static_cast<int64_t>(a.size()), reqs[0].max_tokens);
  EXPECT_EQ(static_cast<int64_t>(c.size()), reqs[2].max_tokens);
}

}  // namespace
}  // namespace clawmine::runtime
