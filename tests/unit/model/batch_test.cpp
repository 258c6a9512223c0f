// Model::forward_batch: a decode step of several sequences in one forward (row-wise work over the
// B rows, attention per sequence) gives each sequence the logits forward() gives it alone, on
// the CPU bit for bit: sequences at different positions (windows not yet full and full, CSA/HCA
// entries completing in different steps), B = 1, sequences joining with prompts of their own, and
// more sequences than one group.
// Bad calls (no tokens, a count mismatch, one cache twice, a null cache) are errors naming the
// problem.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "diag/forwarding_backend.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "support/test_support.h"
#include "unit/model/batch_run.h"

namespace clawmine::model::deepseek_v4 {
namespace {

class ForwardBatch : public ::testing::TestWithParam<const char*> {};

TEST_P(ForwardBatch, EachSequenceGetsItsOwnLogitsBitForBit) {
  auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
  auto cpu = ops::make_cpu_backend(2);
  // Window 16, CSA rate 4, HCA rate 8: the first sequence's window fills during the steps, the
  // others' entries complete at different steps.
  for (const std::vector<int>& prompts : {std::vector<int>{3, 11, 20, 33}, std::vector<int>{7}}) {
    const int steps = 22;
    const Logits one = decode(*model, *cpu, prompts, steps, false);
    const Logits batch = decode(*model, *cpu, prompts, steps, true);
    for (size_t s = 0; s < prompts.size(); ++s) {
      SCOPED_TRACE(str_cat("B ", prompts.size(), ", sequence ", s, " (prompt ", prompts[s], ")"));
      ASSERT_EQ(batch.logits[s].size(), one.logits[s].size());
      EXPECT_EQ(std::memcmp(batch.logits[s].data(), one.logits[s].data(), one.logits[s].size() * sizeof(float)), 0);
    }
  }
}

// CSA layers skip the indexer per sequence (needs_indexer): tiny-a's index_topk is 64, so the
// sequence past position 256 (its indexer store at 66, then 132 rows) selects with the indexer while
// the short one does not, in one batched step; each gets the logits of its own steps, bit for bit.
TEST(ForwardBatchIndexer, ASequenceThatNeedsTheIndexerBesideOneThatDoesNot) {
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  ASSERT_EQ(model->config().index_topk, 64);
  auto cpu = ops::make_cpu_backend(2);
  const std::vector<int> prompts = {5, 262};
  const int steps = 4;
  const Logits one = decode(*model, *cpu, prompts, steps, false);
  const Logits batch = decode(*model, *cpu, prompts, steps, true);
  for (size_t s = 0; s < prompts.size(); ++s) {
    SCOPED_TRACE(str_cat("sequence ", s, " (prompt ", prompts[s], ")"));
    ASSERT_EQ(batch.logits[s].size(), one.logits[s].size());
    EXPECT_EQ(std::memcmp(batch.logits[s].data(), one.logits[s].data(), one.logits[s].size() * sizeof(float)), 0);
  }
}

// More sequences than one group (Model::kMaxBatchRows): the groups run one after another, and
// every row still gets its sequence's own logits.
TEST(ForwardBatchGroups, MoreSequencesThanOneGroup) {
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  auto cpu = ops::make_cpu_backend(2);
  std::vector<int> prompts;
  for (int64_t s = 0; s < Model::kMaxBatchRows + 3; ++s) prompts.push_back(2 + static_cast<int>(s % 7));
  const int steps = 3;
  const Logits one = decode(*model, *cpu, prompts, steps, false);
  const Logits batch = decode(*model, *cpu, prompts, steps, true);
  for (size_t s = 0; s < prompts.size(); ++s) {
    SCOPED_TRACE(str_cat("sequence ", s));
    ASSERT_EQ(batch.logits[s].size(), one.logits[s].size());
    EXPECT_EQ(std::memcmp(batch.logits[s].data(), one.logits[s].data(), one.logits[s].size() * sizeof(float)), 0);
  }
}

// Greedy decoding on the backend (forward_greedy, forward_batch_greedy): the ids are the first
// maximum of the logits forward / forward_batch give, one sequence and a batch (two groups).
TEST_P(ForwardBatch, GreedyOnTheBackendEqualsTheLogitsArgmax) {
  auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
  auto cpu = ops::make_cpu_backend(2);
  expect_greedy_matches_logits(*model, *cpu, {3, 11, 20, 33}, 20, false);
  expect_greedy_matches_logits(*model, *cpu, {3, 11, 20, 33}, 20, true);
  std::vector<int> many;
  for (int64_t s = 0; s < Model::kMaxBatchRows + 2; ++s) many.push_back(2 + static_cast<int>(s % 5));
  expect_greedy_matches_logits(*model, *cpu, many, 2, true);
}

// A non-finite logit is never a greedy token: the step names the entry and its value. (The head's
// output is poisoned at one id by a forwarding backend.)
class NanLogit : public diag::ForwardingBackend {
 public:
  using diag::ForwardingBackend::ForwardingBackend;
  void set_scope(std::string_view scope) override {
    head_ = scope == "head";
    diag::ForwardingBackend::set_scope(scope);
  }
  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override {
    diag::ForwardingBackend::linear(x, w, out);
    if (!head_) return;
    for (int64_t r = 0; r < out.dim(0); ++r) out.f32()[r * out.dim(-1) + 7] = std::numeric_limits<float>::infinity();
  }

 private:
  bool head_ = false;
};

TEST(ForwardGreedy, NonFiniteLogitsNameTheEntry) {
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  auto cpu = ops::make_cpu_backend(1);
  NanLogit be(*cpu);
  const ForwardOptions fo{.official_qdq = true, .all_logits = false};
  SequenceCache cache = model->new_cache();
  const GreedyToken g = model->forward_greedy(be, cache, test_ids(5), fo);
  EXPECT_EQ(g.id, -1);
  EXPECT_EQ(g.non_finite_at, 7);
  EXPECT_EQ(g.non_finite_value, std::numeric_limits<float>::infinity());
  SequenceCache a = model->new_cache(), b = model->new_cache();
  model->forward(be, a, test_ids(4), fo);
  model->forward(be, b, test_ids(6), fo);
  const std::vector<GreedyToken> gb = model->forward_batch_greedy(be, {&a, &b}, {3, 4}, fo);
  ASSERT_EQ(gb.size(), 2u);
  for (const GreedyToken& t : gb) EXPECT_EQ(t.non_finite_at, 7);
}

TEST(ForwardBatchErrors, NameTheProblem) {
  auto model = Model::load(test::fixture_dir("models/tiny-a"));
  auto cpu = ops::make_cpu_backend(1);
  const ForwardOptions fo;
  SequenceCache a = model->new_cache(), b = model->new_cache();
  auto message = [&](const std::vector<SequenceCache*>& caches, const std::vector<int32_t>& ids) {
    try {
      model->forward_batch(*cpu, caches, ids, fo);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({}, {}).find("one token per sequence"), std::string::npos);
  EXPECT_NE(message({&a, &b}, {5}).find("1 token ids for 2 caches"), std::string::npos);
  EXPECT_NE(message({&a, &a}, {5, 6}).find("are the same cache"), std::string::npos);
  EXPECT_NE(message({&a, nullptr}, {5, 6}).find("cache 1 is null"), std::string::npos);
  EXPECT_EQ(a.position, 0);  // nothing consumed by a refused call
  EXPECT_EQ(b.position, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ForwardBatch, ::testing::Values("tiny-a", "tiny-c", "tiny-a-fp8"),
                         fixture_test_name);

}  // namespace
}  // namespace clawmine::model::deepseek_v4
