// Backend branches (ops/backend.h branch/join_branches) on the CUDA backend: ops of branches 1
// and up run on side streams beside the main one, each with its own ticket state; the join orders
// every later op after all; branch_wait orders a branch after another; scratch is not reused
// while a branch is open; captured steps with branches replay like eager ones; a download joins
// first. The long chains on branch 1 (100 adds over 4M floats, ~1 ms) make a
// missing dependency show up as wrong values rather than pass by luck.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_util.h"

namespace clawmine::test {
namespace {

constexpr int64_t kN = int64_t{1} << 22;
constexpr int kChain = 100;

class CudaBranches : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    std::mt19937 rng(1234);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    x.resize(kN);
    for (float& v : x) v = u(rng);
    // What the ops compute, in the same float order: a = x + x + ... (kChain + 1 terms), b = x + x.
    want_a = x;
    for (int i = 0; i < kChain; ++i)
      for (int64_t j = 0; j < kN; ++j) want_a[j] = want_a[j] + x[j];
    want_c.resize(kN);
    for (int64_t j = 0; j < kN; ++j) want_c[j] = want_a[j] + (x[j] + x[j]);
  }
  // Branch 1: a = x, then kChain times a = a + x; branch 2: b = x + x after a chain on a scratch
  // copy; branch 0: d = x; join; c = a + b, then c's bits checked against the in-order ops.
  void step(ops::Backend& be, const TensorView& X, const TensorView& A, const TensorView& B, const TensorView& C) {
    be.branch(1);
    be.copy(X, A);
    for (int i = 0; i < kChain; ++i) be.add(A, X, A);
    be.branch(2);
    be.copy(X, B);
    for (int i = 0; i < kChain / 2; ++i) be.add(B, B, B);
    be.add(X, X, B);
    be.branch(0);
    be.add(X, X, C);
    be.join_branches();
    be.add(A, B, C);
  }
  std::vector<float> download(const TensorView& v) {
    std::vector<float> h(static_cast<size_t>(v.numel()));
    cuda->download(v, h.data());
    return h;
  }
  static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  }
  std::vector<float> x, want_a, want_c;
};

TEST_F(CudaBranches, JoinOrdersLaterOpsAfterBothBranches) {
  ops::DeviceBuffer X = upload_f32(*cuda, x, {kN});
  ops::DeviceBuffer A = poisoned(*cuda, DType::kF32, {kN}), B = poisoned(*cuda, DType::kF32, {kN}),
                    C = poisoned(*cuda, DType::kF32, {kN});
  for (int rep = 0; rep < 3; ++rep) {
    cuda->fill(C.view(), std::nanf(""));
    step(*cuda, X.view(), A.view(), B.view(), C.view());
    EXPECT_TRUE(same_bits(download(C.view()), want_c)) << "repetition " << rep;
  }
}

TEST_F(CudaBranches, DownloadWithAnOpenBranchJoinsFirst) {
  ops::DeviceBuffer X = upload_f32(*cuda, x, {kN});
  ops::DeviceBuffer A = poisoned(*cuda, DType::kF32, {kN});
  cuda->branch(1);
  cuda->copy(X.view(), A.view());
  for (int i = 0; i < kChain; ++i) cuda->add(A.view(), X.view(), A.view());
  // No join: download (and synchronize) join themselves.
  EXPECT_TRUE(same_bits(download(A.view()), want_a));
  cuda->branch(1);
  cuda->fill(A.view(), 3.0f);
  cuda->synchronize();
  EXPECT_EQ(download(A.view())[static_cast<size_t>(kN - 1)], 3.0f);
}

TEST_F(CudaBranches, ScratchIsNotReusedWhileABranchIsOpen) {
  const size_t m0 = cuda->scratch_mark();
  cuda->branch(1);
  {
    ops::ScratchFrame frame(*cuda);
    const TensorView t = cuda->scratch(DType::kF32, {1024});
    EXPECT_NE(t.data, nullptr);
  }
  const size_t m1 = cuda->scratch_mark();
  EXPECT_GT(m1, m0) << "a frame closed inside an open branch gave its scratch back";
  cuda->branch(0);
  const TensorView u = cuda->scratch(DType::kF32, {16});
  EXPECT_GE(cuda->scratch_mark(), m1 + 16 * sizeof(float));
  (void)u;
  cuda->join_branches();
  cuda->scratch_reset(m0);
  EXPECT_EQ(cuda->scratch_mark(), m0);
}

TEST_F(CudaBranches, AnOpFailingInsideABranchLeavesNoScratchBehind) {
  const size_t m0 = cuda->scratch_mark();
  ops::DeviceBuffer X = upload_f32(*cuda, x, {kN});
  try {
    ops::ScratchFrame frame(*cuda);
    const ops::BranchScope branches(*cuda);
    cuda->branch(1);
    const TensorView t = cuda->scratch(DType::kF32, {kN});
    cuda->copy(X.view(), t);
    cuda->add(t, cuda->scratch(DType::kF32, {kN / 2}), t);  // shapes differ: the op throws
    FAIL() << "add of mismatched shapes did not throw";
  } catch (const Error&) {
  }
  EXPECT_EQ(cuda->scratch_mark(), m0) << "the failed step's scratch was not freed";
  // The backend serves the next ops on the main stream.
  ops::DeviceBuffer C = poisoned(*cuda, DType::kF32, {kN});
  cuda->add(X.view(), X.view(), C.view());
  const std::vector<float> c = download(C.view());
  EXPECT_EQ(c[0], x[0] + x[0]);
}

TEST_F(CudaBranches, BadBranchIsAClearError) {
  EXPECT_THROW(cuda->branch(ops::Backend::kMaxBranches), Error);
  EXPECT_THROW(cuda->branch(-1), Error);
  EXPECT_THROW(cuda->branch_wait(ops::Backend::kMaxBranches), Error);
  cuda->join_branches();  // nothing open: a no-op
}

// branch_wait: branch 2 waits for branch 1's long chain (a) and reads it; branch 3 waits for an op
// branch 0 issued after branch 3's fork (d = x + x) and reads it; both eagerly and captured.
TEST_F(CudaBranches, BranchWaitOrdersABranchAfterAnother) {
  ops::DeviceBuffer X = upload_f32(*cuda, x, {kN});
  ops::DeviceBuffer A = poisoned(*cuda, DType::kF32, {kN}), B = poisoned(*cuda, DType::kF32, {kN}),
                    C = poisoned(*cuda, DType::kF32, {kN}), D = poisoned(*cuda, DType::kF32, {kN}),
                    E = poisoned(*cuda, DType::kF32, {kN});
  std::vector<float> want_b(kN), want_e(kN);
  for (int64_t j = 0; j < kN; ++j) {
    want_b[j] = want_a[j] + x[j];
    want_e[j] = (x[j] + x[j]) + x[j];
  }
  auto run = [&] {
    cuda->branch(3);
    cuda->copy(X.view(), C.view());
    for (int i = 0; i < kChain / 2; ++i) cuda->add(C.view(), C.view(), C.view());  // keeps branch 3 busy first
    cuda->branch(1);
    cuda->copy(X.view(), A.view());
    for (int i = 0; i < kChain; ++i) cuda->add(A.view(), X.view(), A.view());
    cuda->branch(2);
    cuda->branch_wait(1);
    cuda->add(A.view(), X.view(), B.view());
    cuda->branch(0);
    cuda->add(X.view(), X.view(), D.view());
    cuda->branch(3);
    cuda->branch_wait(0);
    cuda->add(D.view(), X.view(), E.view());
    cuda->branch_wait(5);  // never forked: nothing to wait for
    cuda->branch(0);
    cuda->join_branches();
  };
  run();  // eagerly
  EXPECT_TRUE(same_bits(download(B.view()), want_b)) << "eager";
  EXPECT_TRUE(same_bits(download(E.view()), want_e)) << "eager";
  constexpr uint64_t kKey = 0x5eee;
  int replays = 0;
  for (int s = 0; s < 5; ++s) {  // as CapturedStepsWithBranchesReplayLikeEagerOnes: captured, then replayed
    for (const ops::DeviceBuffer* buf : {&A, &B, &D, &E}) cuda->fill(buf->view(), std::nanf(""));
    if (cuda->replay_step_graph(kKey)) {
      ++replays;
    } else {
      cuda->begin_step_graph(kKey);
      run();
      cuda->end_step_graph();
    }
    EXPECT_TRUE(same_bits(download(B.view()), want_b)) << "step " << s;
    EXPECT_TRUE(same_bits(download(E.view()), want_e)) << "step " << s;
  }
  EXPECT_GE(replays, 1) << "no step was replayed from a graph";
}

TEST_F(CudaBranches, CapturedStepsWithBranchesReplayLikeEagerOnes) {
  ops::DeviceBuffer X = upload_f32(*cuda, x, {kN});
  ops::DeviceBuffer A = poisoned(*cuda, DType::kF32, {kN}), B = poisoned(*cuda, DType::kF32, {kN}),
                    C = poisoned(*cuda, DType::kF32, {kN});
  constexpr uint64_t kKey = 0x5eed;
  int replays = 0;
  for (int s = 0; s < 5; ++s) {  // the first steps run eagerly, then one is captured, then replays
    cuda->fill(A.view(), std::nanf(""));
    cuda->fill(C.view(), std::nanf(""));
    if (cuda->replay_step_graph(kKey)) {
      ++replays;
    } else {
      cuda->begin_step_graph(kKey);
      step(*cuda, X.view(), A.view(), B.view(), C.view());
      cuda->end_step_graph();
    }
    EXPECT_TRUE(same_bits(download(C.view()), want_c)) << "step " << s;
  }
  EXPECT_GE(replays, 1) << "no step was replayed from a graph";
}

// Ops whose kernels take tickets or keep a histogram in backend-owned device memory (top-k's
// multi-block select over wide rows, here) get that state per branch: every branch's top-k at
// once, each over its own row of 16384 values, equals the same op run alone (bits of the ids).
TEST_F(CudaBranches, EveryBranchHasItsOwnTicketState) {
  constexpr int64_t kRows = ops::Backend::kMaxBranches - 1, kCols = 16384, kTop = 512;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  std::vector<float> v(static_cast<size_t>(kRows * kCols));
  for (float& f : v) f = u(rng);
  ops::DeviceBuffer V = upload_f32(*cuda, v, {kRows, kCols});
  ops::DeviceBuffer alone = poisoned(*cuda, DType::kI32, {kRows, kTop});
  ops::DeviceBuffer together = poisoned(*cuda, DType::kI32, {kRows, kTop});
  for (int64_t r = 0; r < kRows; ++r) cuda->topk(V.view().slice0(r, r + 1), kTop, alone.view().slice0(r, r + 1));
  for (int rep = 0; rep < 3; ++rep) {
    for (int64_t r = 0; r < kRows; ++r) {
      cuda->branch(static_cast<int>(1 + r));
      cuda->topk(V.view().slice0(r, r + 1), kTop, together.view().slice0(r, r + 1));
    }
    cuda->join_branches();
    std::vector<int32_t> a(static_cast<size_t>(kRows * kTop)), b(a.size());
    cuda->download(alone.view(), a.data());
    cuda->download(together.view(), b.data());
    ASSERT_EQ(a, b) << "repetition " << rep;
  }
}

}  // namespace
}  // namespace clawmine::test
