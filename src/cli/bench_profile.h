// Where a forward pass spends its time, op by op, for `clawmine bench --profile`: a Backend
// decorator that synchronizes the inner backend after every op and adds the host-clock time of
// the op (launch + run + the sync's wake-up) to a row keyed by (op, module), the module being
// the weight or scope with its layer number dropped ("linear attn.wq_b", "moe_experts
// ffn.experts", "sparse_attention attn"). The ops run eagerly (decorators never replay decode
// graphs), so each row carries a few microseconds of launch and sync per call that a graph
// replay does not pay: compare the rows with each other, and their sum with the graph-mode step.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "diag/forwarding_backend.h"

namespace clawmine::cli {

class OpProfiler : public diag::ForwardingBackend {
 public:
  explicit OpProfiler(ops::Backend& inner) : diag::ForwardingBackend(inner) {}

  struct Row {
    std::string op, module;
    int64_t calls = 0;
    double seconds = 0;
    double weight_bytes = 0;  // weight bytes the calls read (linears, experts), 0 where not counted
  };
  void set_recording(bool on) { recording_ = on; }
  void reset() { rows_.clear(); }
  std::vector<Row> rows() const;  // largest time first
  double total_seconds() const;
  int64_t total_calls() const;
  // What one timed call costs around the op itself: the median over 50 timed iota ops of one
  // element (launch + tiny kernel + synchronize), recorded nowhere.
  double call_floor_seconds();

  // Memory ops that run on the device (window copies, logits download) are timed too.
  void upload(const void* src, const TensorView& dst) override;
  void download(const TensorView& src, void* dst) override;
  void copy(const TensorView& src, const TensorView& dst) override;
  void fill(const TensorView& dst, float value) override;

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
  void hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p, const TensorView& x_in,
              const TensorView& post, const TensorView& comb) override;
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
  // Runs f, waits for the device, and adds the time to row (op, module).
  template <typename F>
  void timed(const char* op, const std::string& module, double weight_bytes, F&& f) {
    if (!recording_) {
      f();
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    f();
    inner_.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Row& r = rows_[std::string(op) + "|" + module];
    if (r.calls == 0) {
      r.op = op;
      r.module = module;
    }
    ++r.calls;
    r.seconds += s;
    r.weight_bytes += weight_bytes;
  }
  std::string scope_module() const;  // the current scope without "layers.N."

  std::map<std::string, Row> rows_;
  bool recording_ = true;
};

// Bytes a linear weight occupies (weight, block scales, global scales).
double linear_weight_bytes(const ops::LinearWeight& w);
// "layers.12.attn.wq_b" -> "attn.wq_b"; names without a layer prefix are returned as they are.
std::string without_layer(const std::string& name);

}  // namespace clawmine::cli
