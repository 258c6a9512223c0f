#include "core/dag.h"

#include <gtest/gtest.h>

#include <random>

#include "core/error.h"

namespace clawmine {
namespace {

using Edges = std::vector<std::pair<int64_t, int64_t>>;

// Whether v is reachable from u over the kept edges (a path of one edge or more).
bool reachable(int64_t n, const Edges& edges, const std::vector<bool>& drop, int64_t u, int64_t v) {
  std::vector<bool> seen(static_cast<size_t>(n), false);
  std::vector<int64_t> stack{u};
  while (!stack.empty()) {
    const int64_t x = stack.back();
    stack.pop_back();
    for (size_t i = 0; i < edges.size(); ++i) {
      if (drop[i] || edges[i].first != x) continue;
      const int64_t y = edges[i].second;
      if (y == v) return true;
      if (!seen[static_cast<size_t>(y)]) {
        seen[static_cast<size_t>(y)] = true;
        stack.push_back(y);
      }
    }
  }
  return false;
}

TEST(RedundantEdges, ForkAfterAJoinLeavesTheSideBranchOnePredecessor) {
  // The capture pattern: main 0 -> 1 -> 2 -> 3; side branch: 4 forked from 0, joined into 2
  // (4 -> 2); later fork from 3 to the side's next kernel 5, which capture also links to the
  // side's previous node 4.
  const Edges edges{{0, 1}, {1, 2}, {2, 3}, {0, 4}, {4, 2}, {3, 5}, {4, 5}};
  const std::vector<bool> r = redundant_edges(6, edges);
  const std::vector<bool> want{false, false, false, false, false, false, true};
  EXPECT_EQ(r, want);
}

TEST(RedundantEdges, ChainsAndRepeats) {
  EXPECT_EQ(redundant_edges(3, {{0, 1}, {1, 2}, {0, 2}}), (std::vector<bool>{false, false, true}));
  EXPECT_EQ(redundant_edges(2, {{0, 1}, {0, 1}}), (std::vector<bool>{false, true}));
  EXPECT_EQ(redundant_edges(4, {{0, 1}, {0, 2}, {1, 3}, {2, 3}}), (std::vector<bool>(4, false)));  // a diamond
  EXPECT_TRUE(redundant_edges(1, {}).empty());
}

TEST(RedundantEdges, RandomDagsKeepEveryOrderingAndNoRedundantEdge) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t n = 2 + static_cast<int64_t>(rng() % 30);
    Edges edges;
    for (int64_t u = 0; u < n; ++u)
      for (int64_t v = u + 1; v < n; ++v)
        if (rng() % 4 == 0) edges.emplace_back(v, u);  // from the higher index: not in index order
    const std::vector<bool> none(edges.size(), false);
    const std::vector<bool> r = redundant_edges(n, edges);
    ASSERT_EQ(r.size(), edges.size());
    for (int64_t u = 0; u < n; ++u)
      for (int64_t v = 0; v < n; ++v)
        ASSERT_EQ(reachable(n, edges, r, u, v), reachable(n, edges, none, u, v)) << "trial " << trial << ": " << u
                                                                                   << " -> " << v;
    // Minimal: each kept edge is needed.
    for (size_t i = 0; i < edges.size(); ++i) {
      if (r[i]) continue;
      std::vector<bool> without = r;
      without[i] = true;
      ASSERT_FALSE(reachable(n, edges, without, edges[i].first, edges[i].second))
          << "trial " << trial << ": edge " << i;
    }
  }
}

TEST(RedundantEdges, RefusesCyclesAndUnknownNodes) {
  EXPECT_THROW(redundant_edges(2, {{0, 1}, {1, 0}}), Error);
  EXPECT_THROW(redundant_edges(2, {{0, 2}}), Error);
  EXPECT_THROW(redundant_edges(2, {{-1, 0}}), Error);
}

}  // namespace
}  // namespace clawmine
