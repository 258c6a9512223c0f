// Redundant edges of a directed acyclic graph: an edge u -> v is redundant when v is also
// reachable from u through another node, so removing every such edge (the transitive reduction,
// unique for a DAG) keeps every ordering the graph gives. Used on captured CUDA decode graphs
// (backend/cuda/graph.cu), where stream capture leaves a side branch's first kernel after a fork
// with a second, redundant predecessor: that branch's previous node, which the main stream had
// already joined.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace clawmine {

// edges[i] = (from, to), node indices in [0, n_nodes). Returns, per edge, whether it is
// redundant; a repeated edge counts once (its later copies are redundant). Throws Error when an
// index is out of range or the graph has a cycle.
std::vector<bool> redundant_edges(int64_t n_nodes, const std::vector<std::pair<int64_t, int64_t>>& edges);

}  // namespace clawmine
