// ThreadPool: every index visited exactly once for many range/thread combinations, exceptions
// propagate to the caller, nested calls run serially.
#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

namespace clawmine {
namespace {

TEST(ThreadPool, VisitsEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 3, 7, 100, 1001}) {
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n + 5));
        pool.parallel_for(5, 5 + n, [&](int64_t b, int64_t e) {
          ASSERT_LE(5, b);
          ASSERT_LE(e, 5 + n);
          for (int64_t i = b; i < e; ++i) hits[i]++;
        });
        for (int64_t i = 0; i < n + 5; ++i) EXPECT_EQ(hits[i].load(), i >= 5 ? 1 : 0) << "n=" << n << " i=" << i;
      }
    }
  }
}

TEST(ThreadPool, RethrowsChunkException) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(0, 10,
                                 [](int64_t b, int64_t e) {
                                   for (int64_t i = b; i < e; ++i)
                                     if (i == 7) throw std::runtime_error("seven");
                                 }),
               std::runtime_error);
  // The pool stays usable afterwards.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(0, 10, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 45);
}

TEST(ThreadPool, NestedCallsRunSerially) {
  ThreadPool pool(2);
  std::atomic<int64_t> count{0};
  pool.parallel_for(0, 4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(0, 10, [&](int64_t ib, int64_t ie) { count += ie - ib; });
  });
  EXPECT_EQ(count.load(), 40);
}

}  // namespace
}  // namespace clawmine
