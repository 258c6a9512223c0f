// The forward pass's branches (ops::Backend::branch / join_branches) are independent: a backend
// may run the ops of different branches in any interleaving, so the model must never let an op
// of one branch read or overwrite what an op of another writes before the join. Checked on the
// CPU backend by running the ops of each branch region in four orders (the side branches' ops
// after branch 0's, branch 0's after the side branches', and the side branches one after another
// from the highest and from the lowest) and comparing every logit bit, and every top-k's picks in
// their order, with the ops in issue order: a dependency across branches without a wait reads
// stale data in one of them. Fixtures with sliding, CSA (indexer) and HCA layers; prefill chunks
// under and over kBranchMaxTokens, then decode steps; batched decode steps with their lanes
// reversed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "diag/forwarding_backend.h"
#include "model/deepseek_v4/layer.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "support/test_support.h"
#include "unit/model/batch_run.h"
#include "unit/model/chunked_run.h"

namespace clawmine::model::deepseek_v4 {
namespace {

// Defers the ops of one side of every open branch region to its join: kSide the ops issued on
// branches 1 and up, kMain those on branch 0; kReverse defers every op of the region and runs the
// branches from the highest to branch 0 (each branch's ops in issue order: batched decode's
// lanes in the reverse of their order), kForward the side branches from the lowest up, then
// branch 0 (between them, every order of two side branches is run). A side branch's fork (its
// first op of the region) runs the branch-0 ops deferred so far first: a side branch starts after
// every op issued on branch 0 before its fork (ops/backend.h), as the CUDA backend's fork event
// orders it. Scratch resets are held while a region is open, as the CUDA backend holds them.
class BranchReorder final : public diag::ForwardingBackend {
 public:
  enum class Late { kNone, kSide, kMain, kReverse, kForward };  // kNone: every op as issued
  BranchReorder(ops::Backend& inner, Late late) : ForwardingBackend(inner), late_(late) {}
  int regions() const { return regions_; }
  int deferred() const { return deferred_; }
  int waits() const { return waits_; }
  // Every top-k's output in the order the ops ran (the CSA selections): a stale input changes an
  // order or a pick even where the logits come out the same (a pick's order does not reach them).
  const std::vector<std::vector<int32_t>>& topk_log() const { return topk_log_; }

  void branch(int b) override {
    if (b < 0 || b >= kMaxBranches) throw Error("BranchReorder: no branch " + std::to_string(b));
    open_ = true;
    cur_ = b;
    if (b > 0 && !forked_[b]) {  // the fork: branch 0's ops issued so far come first
      forked_[b] = true;
      if (late_ == Late::kMain) run_all(queue_);
      if (per_lane()) run_all(lanes_[0]);
    }
  }
  // The waited branch's deferred ops run now (the current branch's deferred ones may stay later:
  // nothing after the wait reads what they write, and they read nothing the waited branch writes).
  void branch_wait(int b) override {
    if (b < 0 || b >= kMaxBranches) throw Error("BranchReorder: no branch " + std::to_string(b));
    if (!open_ || b == cur_) return;
    ++waits_;
    if (per_lane()) run_all(lanes_[b]);
    if (late_ == Late::kMain && b == 0) run_all(queue_);  // the queue holds branch 0's ops
    if (late_ == Late::kSide && b > 0) run_all(queue_);   // the queue holds every side branch's ops
  }
  void join_branches() override {
    if (!open_) return;
    ++regions_;
    for (auto& f : queue_) f();
    queue_.clear();
    for (int i = 0; i < kMaxBranches; ++i) {  // kForward: 1, 2, ..., then 0; else the highest first
      const int b = late_ == Late::kForward ? (i + 1) % kMaxBranches : kMaxBranches - 1 - i;
      for (auto& f : lanes_[b]) f();
      lanes_[b].clear();
    }
    open_ = false;
    cur_ = 0;
    for (bool& f : forked_) f = false;
  }
  void scratch_reset(size_t mark) override {
    if (!open_) inner_.scratch_reset(mark);
  }
  void download(const TensorView& src, void* dst) override {
    join_branches();
    inner_.download(src, dst);
  }
  void synchronize() override {
    join_branches();
    inner_.synchronize();
  }

  void copy(const TensorView& src, const TensorView& dst) override {
    issue([=, this] { inner_.copy(src, dst); });
  }
  void fill(const TensorView& dst, float value) override {
    issue([=, this] { inner_.fill(dst, value); });
  }
  void embed(const TensorView& table, const TensorView& ids, const TensorView& out) override {
    issue([=, this] { inner_.embed(table, ids, out); });
  }
  void hc_expand(const TensorView& e, const TensorView& X) override {
    issue([=, this] { inner_.hc_expand(e, X); });
  }
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override {
    issue([=, this] { inner_.rms_norm(x, weight, eps, out); });
  }
  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override {
    issue([=, this, &w] { inner_.linear(x, w, out); });
  }
  void grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) override {
    issue([=, this, &w] { inner_.grouped_linear(x, w, groups, out); });
  }
  void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
            bool inverse) override {
    issue([=, this] { inner_.rope(x, positions, inv_freq, rope_dim, inverse); });
  }
  void iota(const TensorView& out, int64_t start, int64_t step) override {
    issue([=, this] { inner_.iota(out, start, step); });
  }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override {
    issue([=, this] { inner_.add(a, b, out); });
  }
  void qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) override {
    issue([=, this] { inner_.qdq(x, kind, n_nope); });
  }
  void hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
              const TensorView& x_in, const TensorView& post, const TensorView& comb) override {
    issue([=, this, &w] { inner_.hc_pre(X, w, p, x_in, post, comb); });
  }
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override {
    issue([=, this] { inner_.hc_post(y, X, post, comb, X_out); });
  }
  void hc_head(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
               const TensorView& y) override {
    issue([=, this, &w] { inner_.hc_head(X, w, p, y); });
  }
  void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                       int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) override {
    issue([=, this] { inner_.attention_index(positions, n_prev, window, entry_base, n_entries, rate, selected, idx); });
  }
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries, const TensorView& idx,
                        const TensorView& sink, float scale, const TensorView& out) override {
    issue([=, this] { inner_.sparse_attention(q, kv, entries, idx, sink, scale, out); });
  }
  void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const ops::CompressorStateView& state, const TensorView& pooled,
                      const TensorView& entry_positions) override {
    issue([=, this] { inner_.compress_chunk(kv, gate, ape, positions, rate, overlap, state, pooled, entry_positions); });
  }
  void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) override {
    issue([=, this] { inner_.scatter_rows(src, keys, divisor, dst); });
  }
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights, float weight_scale,
                      const TensorView& positions, int64_t rate, const TensorView& scores) override {
    issue([=, this] { inner_.indexer_scores(q, keys, weights, weight_scale, positions, rate, scores); });
  }
  void topk(const TensorView& values, int64_t k, const TensorView& out) override {
    issue([=, this] {
      inner_.topk(values, k, out);
      std::vector<int32_t> picked(static_cast<size_t>(out.numel()));
      inner_.download(out, picked.data());
      topk_log_.push_back(std::move(picked));
    });
  }
  void argmax_rows(const TensorView& values, const TensorView& out) override {
    issue([=, this] { inner_.argmax_rows(values, out); });
  }
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid, const TensorView& ids,
                 float routed_scaling, const TensorView& idx, const TensorView& weight) override {
    issue([=, this] { inner_.moe_route(logits, bias, tid2eid, ids, routed_scaling, idx, weight); });
  }
  void moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override {
    issue([=, this, &experts] { inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out); });
  }
  void swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) override {
    issue([=, this, &w] { inner_.swiglu_mlp(x, w, swiglu_limit, out); });
  }

 private:
  bool per_lane() const { return late_ == Late::kReverse || late_ == Late::kForward; }  // lanes_, not queue_
  static void run_all(std::vector<std::function<void()>>& ops) {
    for (auto& f : ops) f();
    ops.clear();
  }
  void issue(std::function<void()> op) {
    if (open_ && per_lane()) {
      lanes_[cur_].push_back(std::move(op));
      if (cur_ > 0) ++deferred_;
    } else if (open_ && late_ != Late::kNone && (late_ == Late::kSide) == (cur_ != 0)) {
      queue_.push_back(std::move(op));
      ++deferred_;
    } else {
      op();
    }
  }

  Late late_;
  bool open_ = false;
  int cur_ = 0, regions_ = 0, deferred_ = 0, waits_ = 0;
  bool forked_[kMaxBranches] = {};
  std::vector<std::function<void()>> queue_;
  std::vector<std::vector<int32_t>> topk_log_;
  std::vector<std::function<void()>> lanes_[kMaxBranches];  // kReverse, kForward: the region's ops per branch
};

// "" when the two top-k logs are equal, else where they first differ.
std::string first_topk_difference(const std::vector<std::vector<int32_t>>& got,
                                  const std::vector<std::vector<int32_t>>& want) {
  if (got.size() != want.size()) return str_cat(got.size(), " top-k calls, expected ", want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    std::string g, w;
    for (int32_t v : got[i]) g += str_cat(" ", v);
    for (int32_t v : want[i]) w += str_cat(" ", v);
    return str_cat("top-k call ", i, " picked", g, ", in order", w);
  }
  return "";
}

class BranchOrder : public ::testing::TestWithParam<const char*> {};

void either_order(const char* fixture, bool indexer_always) {
  auto model = Model::load(test::fixture_dir(std::string("models/") + fixture));
  auto cpu = ops::make_cpu_backend(2);
  const std::vector<int32_t> ids = test_ids(75);  // windows complete in chunks and in decode steps
  ForwardOptions fo;
  fo.indexer_always = indexer_always;
  BranchReorder in_order(*cpu, BranchReorder::Late::kNone);
  const std::vector<float> ref = chunked_run(*model, in_order, ids, true, fo);
  if (indexer_always) ASSERT_FALSE(in_order.topk_log().empty());
  for (BranchReorder::Late late : {BranchReorder::Late::kSide, BranchReorder::Late::kMain, BranchReorder::Late::kReverse,
                                   BranchReorder::Late::kForward}) {
    BranchReorder be(*cpu, late);
    const std::vector<float> got = chunked_run(*model, be, ids, true, fo);
    const char* name = late == BranchReorder::Late::kSide      ? "side branches last"
                       : late == BranchReorder::Late::kMain    ? "branch 0 last"
                       : late == BranchReorder::Late::kReverse ? "branches in reverse"
                                                               : "side branches in order, then branch 0";
    ASSERT_EQ(got.size(), ref.size()) << name;
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0) << name;
    EXPECT_EQ(first_topk_difference(be.topk_log(), in_order.topk_log()), "") << name;
    // Every layer opens two regions (attention, MoE) per chunk of <= 16 tokens: 1 + 45 of them.
    EXPECT_EQ(be.regions(), 2 * model->config().num_hidden_layers * (1 + 45)) << name;
    EXPECT_GT(be.deferred(), 0) << name;
    // Every layer keeps its window after kv's branch; CSA layers select their keys after the
    // indexer keys' and head weights' branches.
    EXPECT_GT(be.waits(), 0) << name;
  }
}

// With the indexer run (--indexer always) and where it is skipped while it would select every
// entry (tiny-a-fp8: index_topk 64, a store of 64 rows; tiny-c: index_topk 4, run either way).
TEST_P(BranchOrder, EitherOrderOfTheBranchesGivesTheInOrderBits) {
  for (bool always : {true, false}) {
    SCOPED_TRACE(always ? "indexer always" : "indexer auto");
    either_order(GetParam(), always);
  }
}

// CSA layers skip the indexer while its top-k would select every entry (ForwardOptions::
// indexer_always off): tiny-a-fp8 (index_topk 64, stores of 64 rows) makes no top-k call and its
// logits are the indexer's within float32 rounding (the same key set, in another order); tiny-c
// (index_topk 4) still selects.
TEST(IndexerSkip, WhereTheTopKTakesEveryEntryTheLogitsAreTheIndexers) {
  auto cpu = ops::make_cpu_backend(2);
  const std::vector<int32_t> ids = test_ids(75);
  for (const char* fixture : {"tiny-a-fp8", "tiny-c"}) {
    SCOPED_TRACE(fixture);
    auto model = Model::load(test::fixture_dir(std::string("models/") + fixture));
    ForwardOptions always;
    always.indexer_always = true;
    BranchReorder with(*cpu, BranchReorder::Late::kNone), skip(*cpu, BranchReorder::Late::kNone);
    const std::vector<float> ref = chunked_run(*model, with, ids, true, always);
    const std::vector<float> got = chunked_run(*model, skip, ids, true);
    ASSERT_FALSE(with.topk_log().empty());
    const bool selects = std::string(fixture) == "tiny-c";
    EXPECT_EQ(skip.topk_log().empty(), !selects);
    ASSERT_EQ(got.size(), ref.size());
    double amax = 0, dmax = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << i;
      amax = std::max(amax, std::fabs(static_cast<double>(ref[i])));
      dmax = std::max(dmax, std::fabs(static_cast<double>(got[i]) - ref[i]));
    }
    ASSERT_GT(amax, 0.0);
    EXPECT_LE(dmax, 1e-5 * amax) << "max |skip - indexer| " << dmax << " of max |logit| " << amax;
    if (selects) EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0);
  }
}

// A batched decode step (Model::forward_batch) runs its sequences' attention on lanes (branches
// 1..8): with the lanes in reverse order, or after branch 0, every logit bit is the in-order one.
TEST_P(BranchOrder, BatchedDecodeLanesInAnyOrderGiveTheInOrderBits) {
  auto model = Model::load(test::fixture_dir(std::string("models/") + GetParam()));
  auto cpu = ops::make_cpu_backend(2);
  const std::vector<int> prompts = {3, 11, 20, 33, 7, 5, 18, 26, 9, 14};  // 10 sequences on 8 lanes
  const Logits ref = decode(*model, *cpu, prompts, 6, true);
  for (BranchReorder::Late late : {BranchReorder::Late::kReverse, BranchReorder::Late::kSide}) {
    BranchReorder be(*cpu, late);
    const Logits got = decode(*model, be, prompts, 6, true);
    for (size_t s = 0; s < prompts.size(); ++s) {
      SCOPED_TRACE(str_cat(late == BranchReorder::Late::kReverse ? "lanes reversed" : "lanes last", ", sequence ", s));
      ASSERT_EQ(got.logits[s].size(), ref.logits[s].size());
      EXPECT_EQ(std::memcmp(got.logits[s].data(), ref.logits[s].data(), ref.logits[s].size() * sizeof(float)), 0);
    }
    EXPECT_GT(be.deferred(), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BranchOrder, ::testing::Values("tiny-c", "tiny-a-fp8"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace clawmine::model::deepseek_v4
