// The float32 reference backend: every op of ops::Backend written plainly, with long dot
// products accumulated in double and each output element computed by exactly one thread in a
// fixed order, so results are bit-identical for any thread count. The ops are defined in one
// file per family (memory.cpp, cpu_backend.cpp (lookup/elementwise), linear.cpp, norm_rope.cpp,
// hyper_connection.cpp, attention.cpp, compressor.cpp, moe.cpp). "Device" memory is host
// memory: allocate/scratch hand out aligned host blocks, upload/download are memcpy.
#pragma once

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace clawmine::backend::cpu {

using ops::CompressorStateView;
using ops::ExpertWeights;
using ops::HcParams;
using ops::HyperConnectionWeights;
using ops::LinearWeight;
using ops::Qdq;

class CpuBackend final : public ops::Backend {
 public:
  explicit CpuBackend(int num_threads) : pool_(num_threads) {}
  ~CpuBackend() override;
  const char* name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }
  DType act_dtype() const override { return DType::kF32; }
  int num_threads() const { return pool_.num_threads(); }

  // memory.cpp
  TensorView allocate(DType dtype, const Shape& shape) override;
  void release(const TensorView& view) override;
  TensorView scratch(DType dtype, const Shape& shape) override;
  size_t scratch_mark() const override { return scratch_.size(); }
  void scratch_reset(size_t mark) override;
  void upload(const void* src, const TensorView& dst) override;
  void download(const TensorView& src, void* dst) override;
  void copy(const TensorView& src, const TensorView& dst) override;
  void fill(const TensorView& dst, float value) override;

  // cpu_backend.cpp
  void embed(const TensorView& table, const TensorView& ids, const TensorView& out) override;
  void hc_expand(const TensorView& e, const TensorView& X) override;
  void iota(const TensorView& out, int64_t start, int64_t step) override;
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override;
  void qdq(const TensorView& x, Qdq kind, int64_t n_nope) override;

  // norm_rope.cpp
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override;
  void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
            bool inverse) override;

  // linear.cpp
  void linear(const TensorView& x, const LinearWeight& w, const TensorView& out) override;
  void grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) override;

  // hyper_connection.cpp
  void hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& x_in,
              const TensorView& post, const TensorView& comb) override;
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override;
  void hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& y) override;

  // attention.cpp
  void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                       int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) override;
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries, const TensorView& idx,
                        const TensorView& sink, float scale, const TensorView& out) override;
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights, float weight_scale,
                      const TensorView& positions, int64_t rate, const TensorView& scores) override;
  void topk(const TensorView& values, int64_t k, const TensorView& out) override;
  void argmax_rows(const TensorView& values, const TensorView& out) override;

  // compressor.cpp
  void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const CompressorStateView& state, const TensorView& pooled,
                      const TensorView& entry_positions) override;
  void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) override;

  // moe.cpp
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid, const TensorView& ids,
                 float routed_scaling, const TensorView& idx, const TensorView& weight) override;
  void moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) override;

 private:
  // out[r, o] = x[r, :] . W[o, :] for r < rows; x [rows, in], out [rows, out] (raw F32 pointers).
  void linear_rows(const float* x, int64_t rows, const LinearWeight& w, float* out);
  // One clamped SwiGLU MLP over rows of x: out = w2(silu(min(w1 x, L)) * clamp(w3 x, -L, L)).
  void swiglu_rows(const float* x, int64_t rows, const ExpertWeights& w, float swiglu_limit, float* out);
  // Compressor pooling: out[n, c] = sum_s softmax_s(score[n, s, c]) * kv[n, s, c] over the slot
  // axis, per channel; -inf scores take no weight (a channel with none gives 0).
  // kv, score [N, S, d] (raw F32); out [N, d].
  void compress_pool(const float* kv, const float* score, int64_t N, int64_t S, int64_t d, float* out);

  ThreadPool pool_;
  // Long-lived blocks (allocate) by address -> bytes, so release() can check what it frees.
  std::mutex alloc_mutex_;
  std::unordered_map<void*, size_t> allocated_;
  // Scratch blocks in the order they were handed out; a mark is a stack height.
  std::vector<void*> scratch_;
};

}  // namespace clawmine::backend::cpu
