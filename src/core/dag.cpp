#include "core/dag.h"

#include <cstddef>

#include "core/error.h"

namespace clawmine {

std::vector<bool> redundant_edges(int64_t n_nodes, const std::vector<std::pair<int64_t, int64_t>>& edges) {
  const auto n = static_cast<size_t>(n_nodes);
  std::vector<std::vector<size_t>> out(n);  // edge indices by source
  std::vector<int64_t> indegree(n, 0);
  for (size_t i = 0; i < edges.size(); ++i) {
    const auto [u, v] = edges[i];
    if (u < 0 || u >= n_nodes || v < 0 || v >= n_nodes)
      throw Error(str_cat("redundant_edges: edge ", i, " (", u, " -> ", v, ") names a node outside 0..", n_nodes - 1));
    out[static_cast<size_t>(u)].push_back(i);
    ++indegree[static_cast<size_t>(v)];
  }
  // Topological order (Kahn).
  std::vector<size_t> order;
  order.reserve(n);
  for (size_t v = 0; v < n; ++v)
    if (indegree[v] == 0) order.push_back(v);
  for (size_t k = 0; k < order.size(); ++k)
    for (size_t e : out[order[k]])
      if (--indegree[static_cast<size_t>(edges[e].second)] == 0) order.push_back(static_cast<size_t>(edges[e].second));
  if (order.size() != n) throw Error(str_cat("redundant_edges: the graph of ", n_nodes, " nodes has a cycle"));

  // reach[v]: the nodes reachable from v by a path of one edge or more, as 64-bit words.
  const size_t words = (n + 63) / 64;
  std::vector<uint64_t> reach(n * words, 0);
  auto has = [&](size_t from, size_t v) { return (reach[from * words + v / 64] >> (v % 64)) & 1u; };
  std::vector<bool> redundant(edges.size(), false);
  for (size_t k = n; k-- > 0;) {  // sinks first: every successor's set is complete
    const size_t u = order[k];
    uint64_t* ru = &reach[u * words];
    for (size_t e : out[u]) {
      const auto v = static_cast<size_t>(edges[e].second);
      const uint64_t* rv = &reach[v * words];
      for (size_t w = 0; w < words; ++w) ru[w] |= rv[w];
    }
    // u -> v is redundant when v is reachable from another successor of u (through it), or
    // when it repeats an earlier u -> v.
    const std::vector<size_t>& eu = out[u];
    for (size_t j = 0; j < eu.size(); ++j) {
      const auto v = static_cast<size_t>(edges[eu[j]].second);
      bool r = false;
      for (size_t k = 0; k < eu.size() && !r; ++k) {
        const auto w = static_cast<size_t>(edges[eu[k]].second);
        r = (k < j && w == v) || (w != v && has(w, v));
      }
      redundant[eu[j]] = r;
    }
    for (size_t e : out[u]) {
      const auto v = static_cast<size_t>(edges[e].second);
      ru[v / 64] |= uint64_t{1} << (v % 64);
    }
  }
  return redundant;
}

}  // namespace clawmine
