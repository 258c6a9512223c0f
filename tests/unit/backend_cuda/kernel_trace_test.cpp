// The kernel timeline (backend/cuda/kernel_trace.h, CUPTI activity records): kernels run between
// start and stop come back with their stream, ordered stamps on kernel_trace_now's clock, and their
// launch shape, eagerly and as nodes of a recorded step graph. Skips without a GPU or CUPTI; where it
// refuses to record (another profiler), it skips with CUPTI's message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend/cuda/kernel_trace.h"
#include "cuda_test_util.h"

namespace clawmine::test {
namespace {

class CudaKernelTrace : public GpuTest {};

TEST_F(CudaKernelTrace, RecordsEagerAndGraphKernelsWithStampsAndStreams) {
  if (!backend::cuda::KernelTrace::available()) GTEST_SKIP() << "no CUPTI (header at build time, library at run time)";
  const ops::DeviceBuffer a = poisoned(*cuda, DType::kF32, {1 << 20}), b = poisoned(*cuda, DType::kF32, {1 << 20});
  cuda->fill(a.view(), 1.0f);  // module loads before the recording
  cuda->synchronize();
  backend::cuda::KernelTrace trace;
  try {
    trace.start();
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();
  }
  const uint64_t t0 = backend::cuda::kernel_trace_now();
  cuda->fill(a.view(), 2.0f);
  cuda->add(a.view(), a.view(), b.view());
  cuda->synchronize();
  // The same two ops as a recorded step graph (the first calls run eagerly, then one records).
  constexpr uint64_t kKey = 0x7ace;
  for (int s = 0; s < 5; ++s) {
    if (cuda->replay_step_graph(kKey)) continue;
    cuda->begin_step_graph(kKey);
    cuda->fill(a.view(), 3.0f);
    cuda->add(a.view(), a.view(), b.view());
    cuda->end_step_graph();
  }
  cuda->synchronize();
  const uint64_t t1 = backend::cuda::kernel_trace_now();
  const std::vector<backend::cuda::KernelRecord> ks = trace.stop();
  ASSERT_GE(ks.size(), 12u) << "fill + add, eagerly and in 5 steps";
  int fills = 0, adds = 0, in_graph = 0;
  for (size_t i = 0; i < ks.size(); ++i) {
    const auto& k = ks[i];
    SCOPED_TRACE(k.name);
    EXPECT_LE(k.start_ns, k.end_ns);
    EXPECT_GE(k.start_ns, t0);
    EXPECT_LE(k.end_ns, t1);
    if (i > 0) EXPECT_GE(k.start_ns, ks[i - 1].start_ns) << "records come in start order";
    EXPECT_GT(k.grid[0], 0);
    EXPECT_GT(k.block[0], 0);
    EXPECT_GT(k.regs, 0u) << "CUPTI's registers per thread";
    fills += k.name.find("fill") != std::string::npos;
    adds += k.name.find("add") != std::string::npos;
    in_graph += k.graph_id != 0;
  }
  EXPECT_GE(fills, 6);
  EXPECT_GE(adds, 6);
  EXPECT_GE(in_graph, 2) << "the replayed steps' kernels carry their graph";
  // A second recording in the same process works too, and stop without start returns nothing.
  backend::cuda::KernelTrace again;
  again.start();
  cuda->fill(a.view(), 4.0f);
  cuda->synchronize();
  EXPECT_GE(again.stop().size(), 1u);
  backend::cuda::KernelTrace idle;
  EXPECT_TRUE(idle.stop().empty());
}

}  // namespace
}  // namespace clawmine::test
