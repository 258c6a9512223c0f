// A stand-in for a device backend on a machine without one, for the diag tests: ShadowDevice
// reports Device::kCuda and hands out memory (allocate, scratch) that the host cannot read: the
// views carry Device::kCuda and a pointer tagged with bit 62, a non-canonical x86-64 / AArch64
// address, so any direct host read of it faults. Its ops untag their arguments and run the CPU
// reference backend on the real memory; upload/download/copy/fill go through the CPU backend's.
// Every tensor argument of an op must be such a tagged device view (an Error naming the op and
// argument otherwise), so a test over it also checks that the caller (the model, a diagnostics
// decorator) passes only device memory, and that diagnostics read it back only through
// download(), as they must on CUDA. Counts downloads so tests can see the read-back path ran.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ops/backend.h"

namespace clawmine::test {

class ShadowDevice final : public ops::Backend {
 public:
  explicit ShadowDevice(int threads = 2);
  const char* name() const override { return "shadow-cuda"; }
  Device device() const override { return Device::kCuda; }
  DType act_dtype() const override { return DType::kF32; }
  int64_t downloads() const { return downloads_; }
  int64_t uploads() const { return uploads_; }
  ops::Backend& cpu() { return *cpu_; }

  TensorView allocate(DType dtype, const Shape& shape) override;
  void release(const TensorView& view) override;
  TensorView scratch(DType dtype, const Shape& shape) override;
  size_t scratch_mark() const override { return cpu_->scratch_mark(); }
  void scratch_reset(size_t mark) override { cpu_->scratch_reset(mark); }
  void upload(const void* src, const TensorView& dst) override;
  void download(const TensorView& src, void* dst) override;
  void copy(const TensorView& src, const TensorView& dst) override;
  void fill(const TensorView& dst, float value) override;
  void set_linear_policy(const ops::LinearPolicy& policy) override;

  void embed(const TensorView& table, const TensorView& ids, const TensorView& out) override;
  void hc_expand(const TensorView& e, const TensorView& X) override;
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override;
  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override;
  void grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) override;
  void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
            bool inverse) override;
  void iota(const TensorView& out, int64_t start, int64_t step) override;
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override;
  void qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) override;
  void hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
              const TensorView& x_in, const TensorView& post, const TensorView& comb) override;
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override;
  void hc_head(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
               const TensorView& y) override;
  void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                       int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) override;
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries, const TensorView& idx,
                        const TensorView& sink, float scale, const TensorView& out) override;
  void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const ops::CompressorStateView& state, const TensorView& pooled,
                      const TensorView& entry_positions) override;
  void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) override;
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights, float weight_scale,
                      const TensorView& positions, int64_t rate, const TensorView& scores) override;
  void topk(const TensorView& values, int64_t k, const TensorView& out) override;
  void argmax_rows(const TensorView& values, const TensorView& out) override;
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid, const TensorView& ids,
                 float routed_scaling, const TensorView& idx, const TensorView& weight) override;
  void moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) override;

 private:
  std::unique_ptr<ops::Backend> cpu_;
  int64_t downloads_ = 0, uploads_ = 0;
};

// The host view behind a ShadowDevice view (empty views stay empty); anything else is an Error
// naming `op` and `arg`.
TensorView shadow_untag(const TensorView& v, const char* op, const char* arg);

}  // namespace clawmine::test
