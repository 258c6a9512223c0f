// The CudaBackend class, shared by the .cu files that define its ops (one file per op family:
// memory.cu, elementwise.cu, hyper_connection.cu, route.cu, linear.cu, moe.cu, attention.cu,
// compressor.cu, indexer.cu). Everything runs on one stream in issue order (decode steps may
// open branches on side streams: branches.cu); kernels never allocate: temporaries come
// from the scratch region (stream order makes reuse safe; no reuse while a branch is open).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_backend.h"
#include "core/thread_pool.h"  // H3 (backend.cu/memory.cu): copy_pool_ below

namespace clawmine::backend::cuda {

using ops::CompressorStateView;
using ops::ExpertWeights;
using ops::HcParams;
using ops::HyperConnectionWeights;
using ops::LinearWeight;
using ops::Qdq;

class CudaBackend final : public ops::Backend {
 public:
  explicit CudaBackend(const CudaOptions& options);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }
  DType act_dtype() const override { return options_.act_dtype; }
  const CudaOptions& options() const { return options_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  int sm_count() const { return sm_count_; }
  ArenaUsage usage() const;
  const GraphStats& step_graph_stats() const { return graph_stats_; }

  // memory.cu
  TensorView allocate(DType dtype, const Shape& shape) override;
  void release(const TensorView& view) override;
  TensorView scratch(DType dtype, const Shape& shape) override;
  size_t scratch_mark() const override { return scratch_top_; }
  void scratch_reset(size_t mark) override;
  void upload(const void* src, const TensorView& dst) override;
  void download(const TensorView& src, void* dst) override;
  void copy(const TensorView& src, const TensorView& dst) override;
  void fill(const TensorView& dst, float value) override;
  void synchronize() override;

  // graph.cu: decode steps recorded by stream capture under the caller's key and replayed
  // unchanged (a small LRU of executable graphs).
  bool replay_step_graph(uint64_t key) override;
  void retire_step_graph(uint64_t key) override;
  void begin_step_graph(uint64_t key) override;
  void end_step_graph() override;
  bool capturing() const { return capturing_; }

  // branches.cu: branch b's ops on side stream b-1 (stream_ is the current branch's stream,
  // main_stream_ the main one); forked from and joined into the main stream by events.
  void branch(int b) override;
  void branch_early(int b) override;
  void branch_wait(int b) override;
  void join_branches() override;
  bool branches_open() const { return n_forked_ > 0; }
  void discard_capture();  // ends and drops a capture left open by a failed step
  // Host transfers inside a capture are errors: the capture is dropped, then Error is thrown.
  void refuse_inside_capture(const char* what);

  // elementwise.cu
  void embed(const TensorView& table, const TensorView& ids, const TensorView& out) override;
  void hc_expand(const TensorView& e, const TensorView& X) override;
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override;
  void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
            bool inverse) override;
  void iota(const TensorView& out, int64_t start, int64_t step) override;
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override;
  void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) override;
  void qdq(const TensorView& x, Qdq kind, int64_t n_nope) override;
  // norm_rope_qdq.cu: one kernel, bit-identical to the rms_norm -> rope -> qdq composition.
  void norm_rope_qdq(const TensorView& x, const VecPrep& p, const TensorView& positions,
                     const TensorView& inv_freq) override;

  // hyper_connection.cu
  void hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& x_in,
              const TensorView& post, const TensorView& comb) override;
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override;
  void hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& y) override;
  // hc_post -> hc_pre -> rms_norm: one kernel at decode, three passes at prefill (hc_post, the
  // mix, the finish with the norm); bit-identical to the composition.
  void hc_post_pre(const TensorView& y, const TensorView& y_add, const TensorView& X, const TensorView& post,
                   const TensorView& comb, const TensorView& X_out, const HyperConnectionWeights& w,
                   const HcParams& p, const TensorView& norm_weight, float eps, const TensorView& x_in,
                   const TensorView& post_out, const TensorView& comb_out) override;

  // route.cu
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid, const TensorView& ids,
                 float routed_scaling, const TensorView& idx, const TensorView& weight) override;
  // The router GEMV and the route in one launch at decode sizes (its last block routes), when
  // set_moe_router_fused / CLAWMINE_MOE_ROUTER_FUSED turns it on; else linear and moe_route.
  void moe_router(const TensorView& x, const LinearWeight& gate, const TensorView& bias, const TensorView& tid2eid,
                  const TensorView& ids, float routed_scaling, const TensorView& logits, const TensorView& idx,
                  const TensorView& weight) override;

  // linear.cu, moe.cu
  void linear(const TensorView& x, const LinearWeight& w, const TensorView& out) override;
  void grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) override;
  // linear_multi.cu: same-shaped projections of one x in one GEMV launch at decode sizes.
  void linear_multi(const TensorView& x, const LinearJob* jobs, int64_t n_jobs) override;
  void moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) override;

  // attention.cu, compressor.cu, indexer.cu
  void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                       int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) override;
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries, const TensorView& idx,
                        const TensorView& sink, float scale, const TensorView& out) override;
  void sparse_attention_rope(const TensorView& q, const TensorView& kv, const TensorView& entries,
                             const TensorView& idx, const TensorView& sink, float scale, const TensorView& positions,
                             const TensorView& inv_freq, int64_t rope_dim, const TensorView& out) override;
  void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const CompressorStateView& state, const TensorView& pooled,
                      const TensorView& entry_positions) override;
  // compressor.cu: compress_chunk -> norm_rope_qdq -> scatter_rows as one launch at decode sizes.
  void compress_store(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const CompressorStateView& state, const VecPrep& prep,
                      const TensorView& inv_freq, const TensorView& pooled, const TensorView& entry_positions,
                      const TensorView& entries) override;
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights, float weight_scale,
                      const TensorView& positions, int64_t rate, const TensorView& scores) override;
  void topk(const TensorView& values, int64_t k, const TensorView& out) override;
  void argmax_rows(const TensorView& values, const TensorView& out) override;

  // Per-op state kept across calls and keyed by a stable host address (for example a device
  // table of expert weight pointers keyed by the experts vector's data()). Freed with the backend.
  template <typename T>
  T* op_state(const void* key) {
    auto it = op_state_.find(key);
    if (it == op_state_.end()) it = op_state_.emplace(key, std::make_shared<T>()).first;
    return static_cast<T*>(it->second.get());
  }
  // The same, one per branch (the current one: branch_): state that kernels write (ticket
  // counters, histograms) is never shared by ops of two branches, which may run at once.
  template <typename T>
  T* branch_op_state(const void* key) {
    const std::pair<const void*, int> k{key, branch_};
    auto it = branch_op_state_.find(k);
    if (it == branch_op_state_.end()) it = branch_op_state_.emplace(k, std::make_shared<T>()).first;
    return static_cast<T*>(it->second.get());
  }
  // n unsigned ticket counters kept per backend and branch under `key` (branch_op_state), zero for every kernel that
  // takes tickets from them (its last block resets what it used). Allocated on first use and
  // cleared until a clear has run outside a stream capture: a clear issued inside a capture is a
  // node of that graph, and a discarded capture leaves the next eager call to clear again.
  unsigned* zeroed_counters(const void* key, int64_t n);

  // attention.cu: sparse_attention, with the inverse rope of the output fused when rope_out is
  // given and the decode kernel runs; returns whether it was (else the caller still owes the rope).
  struct RopeOut {
    const int32_t* positions;
    const float* inv_freq;
    int64_t rope_dim;
  };
  bool sparse_attention_impl(const TensorView& q, const TensorView& kv, const TensorView& entries,
                             const TensorView& idx, const TensorView& sink, float scale, const RopeOut* rope_out,
                             const TensorView& out);

  // Checks that a tensor argument lives on this device (Device::kCuda) with a non-null pointer.
  void expect_device(const TensorView& v, const char* op, const char* arg) const;

 private:
  CudaOptions options_;
  int sm_count_ = 0;
  cudaStream_t stream_ = nullptr;       // the current branch's stream (ops launch on it)
  cudaStream_t main_stream_ = nullptr;  // branch 0: graphs, transfers and synchronize()
  cublasHandle_t cublas_ = nullptr;

  // branches.cu: side streams and their fork/join events (created on first use).
  static constexpr int kMaxBranches = ops::Backend::kMaxBranches;  // 0 (main) and the side streams
  struct Side {
    cudaStream_t stream = nullptr;
    cudaEvent_t fork = nullptr, join = nullptr, mark = nullptr;  // mark: branch_wait on this side
    bool forked = false;
  };
  Side side_[kMaxBranches - 1];
  cudaEvent_t main_mark_ = nullptr;  // branch_wait(0)
  int n_forked_ = 0;
  int branch_ = 0;  // the branch ops are issued to (0 also when side streams are off)
  void to_branch(int b, bool early);  // branch / branch_early
  void start_at_fork(cudaStream_t side);  // inside a capture: side's dependencies := the fork point
  void close_branches() noexcept;    // join_branches without throwing
  void free_branches() noexcept;     // and frees the side streams (release_all)

  // The arena: [long-lived allocations | scratch region]. Long-lived blocks come from a
  // first-fit free list (offset -> size) with coalescing; scratch is a bump pointer.
  char* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  size_t long_lived_bytes_ = 0;  // size of the long-lived part (scratch follows)
  std::map<size_t, size_t> free_;       // offset -> size
  std::map<size_t, size_t> allocated_;  // offset -> size
  size_t allocated_total_ = 0;
  size_t scratch_top_ = 0;
  size_t scratch_peak_ = 0;

  // Pinned staging for upload(): a ring of buffers whose reuse waits on an event.
  struct Staging {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;
  };
  std::vector<Staging> staging_;
  size_t next_staging_ = 0;

  std::unordered_map<const void*, std::shared_ptr<void>> op_state_;
  std::map<std::pair<const void*, int>, std::shared_ptr<void>> branch_op_state_;

  // ---- added by H3 (backend.cu, memory.cu) ----
  // Uploads smaller than a staging buffer share it: the next one starts at staging_offset_ in
  // staging_[next_staging_] (the buffer's event, re-recorded after each copy, covers them all).
  size_t staging_offset_ = 0;
  // Threads that copy host data into pinned staging (mmapped weights: parallel page faults).
  std::unique_ptr<ThreadPool> copy_pool_;
  Staging& staging_slot(size_t i);     // pins buffer i on first use
  void release_all() noexcept;         // frees everything taken so far (constructor failure, destructor)
  // ---- end H3 ----

  // graph.cu
  bool capturing_ = false;
  uint64_t capture_key_ = 0;
  int64_t eager_steps_ = 0;  // the first steps run eagerly (one-time uploads of per-op tables)
  struct StepGraph {
    uint64_t key = 0;
    cudaGraphExec_t exec = nullptr;
    int64_t last_use = 0;
  };
  std::vector<StepGraph> graphs_;  // at most kMaxStepGraphs (graph.cu), least recently used evicted
  int64_t graph_clock_ = 0;
  uint64_t retired_key_ = 0;  // retire_step_graph's key (with the policy), for the next capture
  GraphStats graph_stats_;
  void destroy_graphs();
};

}  // namespace clawmine::backend::cuda
