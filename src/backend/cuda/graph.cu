// CUDA graphs for decode steps. The caller names a step by a key derived from everything that
// shapes its ops (ops/backend.h); per-step values live in device tensors uploaded before the
// step. A key seen before replays its executable graph as it is: one cudaGraphLaunch replaces the
// step's hundreds of kernel launches and the host issues nothing else. A new key is recorded by
// stream capture while its ops are issued, instantiated, and launched. Graphs are kept in a small
// LRU (one per live sequence and cache layout; a sequence's layout changes only when its
// compressed-entry stores grow). The first steps run eagerly so one-time uploads (per-op tables)
// never happen inside a capture. With CudaOptions::graph_update, a step captured after its
// sequence's previous graph was retired is written into that executable graph by
// cudaGraphExecUpdate when the topology matches (same kernels and edges, other arguments and
// grids), which costs less than an instantiation; otherwise it is instantiated as usual.
//
// Joins. A kernel node with more than one predecessor is not launched early under PDL: it starts
// ~1.8 us after its last input has ended, where one with a single predecessor is resident before
// and its wait returns ~0.26 us after (H200, tools/join_probe, thirty-fifth session).
// CLAWMINE_GRAPH_REPORT=1 logs, for the first captured step, its nodes, edges, redundant edges
// (an edge whose successor is reachable through another path, core/dag.h) and joins by kernel.
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "core/dag.h"
#include "core/log.h"

namespace clawmine::backend::cuda {

namespace {
constexpr int64_t kEagerSteps = 2;
constexpr size_t kMaxStepGraphs = 64;  // a server's concurrent sequences each keep one

// The linear policy shapes the recorded kernels too (activation transforms): part of the key.
uint64_t with_policy(uint64_t key, const ops::LinearPolicy& p) {
  const uint64_t v = static_cast<uint64_t>(p.nvfp4) | static_cast<uint64_t>(p.fp8) << 2 |
                     static_cast<uint64_t>(p.act_scale) << 4 | static_cast<uint64_t>(p.saturate) << 6;
  return key ^ ((v + 1) * 0x9E3779B97F4A7C15ull);
}

struct GraphEdges {
  std::vector<cudaGraphNode_t> from, to;
  std::vector<cudaGraphEdgeData> data;
};

GraphEdges graph_edges(cudaGraph_t g) {
  size_t n = 0;
#if CUDART_VERSION >= 13000
  CLAWMINE_CUDA_CHECK(cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &n));
#else
  CLAWMINE_CUDA_CHECK(cudaGraphGetEdges_v2(g, nullptr, nullptr, nullptr, &n));
#endif
  GraphEdges e{std::vector<cudaGraphNode_t>(n), std::vector<cudaGraphNode_t>(n), std::vector<cudaGraphEdgeData>(n)};
#if CUDART_VERSION >= 13000
  CLAWMINE_CUDA_CHECK(cudaGraphGetEdges(g, e.from.data(), e.to.data(), e.data.data(), &n));
#else
  CLAWMINE_CUDA_CHECK(cudaGraphGetEdges_v2(g, e.from.data(), e.to.data(), e.data.data(), &n));
#endif
  e.from.resize(n);
  e.to.resize(n);
  e.data.resize(n);
  return e;
}

// "name<args> grid XxYxZ" of a kernel node, the node type's number otherwise.
std::string node_label(cudaGraphNode_t v) {
  cudaGraphNodeType t{};
  CLAWMINE_CUDA_CHECK(cudaGraphNodeGetType(v, &t));
  if (t != cudaGraphNodeTypeKernel) return str_cat("(node type ", static_cast<int>(t), ")");
  cudaKernelNodeParams kp{};
  CLAWMINE_CUDA_CHECK(cudaGraphKernelNodeGetParams(v, &kp));
  const char* mangled = nullptr;
  if (cudaFuncGetName(&mangled, kp.func) != cudaSuccess || mangled == nullptr) {
    cudaGetLastError();
    mangled = "?";
  }
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> plain(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                                    &std::free);
  std::string name = status == 0 && plain ? plain.get() : mangled;
  for (const char* ns : {"clawmine::backend::cuda::", "(anonymous namespace)::"}) {
    for (size_t p; (p = name.find(ns)) != std::string::npos;) name.erase(p, std::strlen(ns));
  }
  if (name.size() > 90) name = name.substr(0, 90) + "...";
  return str_cat(name, " grid ", kp.gridDim.x, "x", kp.gridDim.y, "x", kp.gridDim.z);
}

// CudaOptions::graph_report: a captured step's redundant edges, counted; the first step's nodes,
// edges, redundant edges and joins logged by kernel.
int64_t report_graph(cudaGraph_t g) {
  const GraphEdges e = graph_edges(g);
  std::unordered_map<cudaGraphNode_t, int64_t> index;
  std::vector<std::pair<int64_t, int64_t>> edges(e.from.size());
  auto id = [&](cudaGraphNode_t v) { return index.emplace(v, static_cast<int64_t>(index.size())).first->second; };
  for (size_t i = 0; i < edges.size(); ++i) edges[i] = {id(e.from[i]), id(e.to[i])};
  const std::vector<bool> redundant = redundant_edges(static_cast<int64_t>(index.size()), edges);
  const int64_t n_redundant = std::count(redundant.begin(), redundant.end(), true);
  static bool done = false;
  if (done) return n_redundant;
  done = true;
  size_t n_nodes = 0;
  CLAWMINE_CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &n_nodes));
  std::unordered_map<cudaGraphNode_t, int> preds;
  std::map<std::string, int> redundant_by_kernel;
  size_t programmatic = 0;
  for (size_t i = 0; i < e.to.size(); ++i) {
    ++preds[e.to[i]];
    programmatic += e.data[i].type == cudaGraphDependencyTypeProgrammatic ? 1 : 0;
    if (redundant[i]) ++redundant_by_kernel[str_cat(node_label(e.to[i]), " <- ", node_label(e.from[i]))];
  }
  std::map<std::string, int> joins;
  int n_joins = 0;
  for (const auto& [v, k] : preds) {
    if (k < 2) continue;
    ++n_joins;
    ++joins[str_cat(node_label(v), " (", k, " predecessors)")];
  }
  log_info("cuda", "step graph: ", n_nodes, " nodes, ", e.to.size(), " edges (", programmatic, " programmatic, ",
           n_redundant, " redundant), ", n_joins, " nodes with more than one predecessor:");
  for (const auto& [label, count] : joins) log_info("cuda", "  ", count, " x ", label);
  for (const auto& [label, count] : redundant_by_kernel) log_info("cuda", "  redundant: ", count, " x ", label);
  return n_redundant;
}
}  // namespace

void CudaBackend::destroy_graphs() {
  for (StepGraph& g : graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  graphs_.clear();
}

// A step that threw between begin_step_graph and end_step_graph leaves the stream capturing;
// its ops never ran (the forward failed and its sequence is abandoned). End the capture and
// drop it so the backend serves the next request.
void CudaBackend::discard_capture() {
  if (!capturing_) return;
  retired_key_ = 0;
  close_branches();  // side streams rejoin the capture before it ends
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  log_warn("cuda", "a captured decode step was abandoned (an op failed inside it); its graph is dropped");
}

void CudaBackend::refuse_inside_capture(const char* what) {
  if (!capturing_) return;
  discard_capture();  // the backend stays usable for the next request
  throw Error(str_cat("cuda ", what, " inside a captured decode step (host transfers belong outside "
                      "begin_step_graph/end_step_graph); the step is abandoned"));
}

void CudaBackend::retire_step_graph(uint64_t key) { retired_key_ = with_policy(key, policy_); }

bool CudaBackend::replay_step_graph(uint64_t key) {
  discard_capture();
  join_branches();
  key = with_policy(key, policy_);
  if (!options_.graphs) return false;
  auto it = std::find_if(graphs_.begin(), graphs_.end(), [&](const StepGraph& g) { return g.key == key; });
  if (it == graphs_.end()) return false;
  it->last_use = ++graph_clock_;
  CLAWMINE_CUDA_CHECK(cudaGraphLaunch(it->exec, stream_));
  return true;
}

void CudaBackend::begin_step_graph(uint64_t key) {
  discard_capture();
  join_branches();
  if (!options_.graphs || eager_steps_ < kEagerSteps) {
    ++eager_steps_;
    retired_key_ = 0;
    return;
  }
  CLAWMINE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_key_ = with_policy(key, policy_);
}

void CudaBackend::end_step_graph() {
  join_branches();
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  CLAWMINE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  try {
    if (options_.graph_report) graph_stats_.redundant_edges += report_graph(graph);
  } catch (...) {
    cudaGraphDestroy(graph);
    throw;
  }
  const uint64_t retired = std::exchange(retired_key_, 0);
  // The retired graph, updated in place to this capture.
  auto old = options_.graph_update && retired != 0 && retired != capture_key_
                 ? std::find_if(graphs_.begin(), graphs_.end(), [&](const StepGraph& g) { return g.key == retired; })
                 : graphs_.end();
  if (old != graphs_.end()) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(old->exec, graph, &info) == cudaSuccess) {
      cudaGraphDestroy(graph);
      const cudaGraphExec_t exec = old->exec;
      old->key = capture_key_;
      old->last_use = ++graph_clock_;
      // A graph kept under this key before (recorded, then left by its owner) is dropped.
      auto dup = std::find_if(graphs_.begin(), graphs_.end(),
                              [&](const StepGraph& g) { return g.key == capture_key_ && g.exec != exec; });
      if (dup != graphs_.end()) {
        cudaGraphExecDestroy(dup->exec);
        graphs_.erase(dup);
      }
      ++graph_stats_.updated;
      CLAWMINE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
      return;
    }
    cudaGetLastError();  // a topology mismatch is not an error: instantiate below
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) throw_cuda_error(err, "cudaGraphInstantiate", __FILE__, __LINE__);
  ++graph_stats_.instantiated;
  // A key recorded again (its earlier graph was evicted or the caller re-recorded it) replaces it.
  auto same = std::find_if(graphs_.begin(), graphs_.end(), [&](const StepGraph& g) { return g.key == capture_key_; });
  if (same == graphs_.end() && graphs_.size() >= kMaxStepGraphs) {
    same = std::min_element(graphs_.begin(), graphs_.end(),
                            [](const StepGraph& a, const StepGraph& b) { return a.last_use < b.last_use; });
  }
  if (same != graphs_.end()) {
    cudaGraphExecDestroy(same->exec);
    *same = StepGraph{capture_key_, exec, ++graph_clock_};
  } else {
    graphs_.push_back(StepGraph{capture_key_, exec, ++graph_clock_});
  }
  CLAWMINE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
}

}  // namespace clawmine::backend::cuda
