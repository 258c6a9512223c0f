// The numerics trace: a Backend decorator that forwards every op to another backend and records,
// per op, its name (the model's scope + op, or the linear's module name), op kind, output shape
// and dtype, compute path for linears, and stats (amax, RMS, mean, NaN, Inf) of inputs and
// outputs; optionally as JSON lines. It also locates the first non-finite op (locator.h) and
// keeps a per-layer summary. Inserted only when tracing is asked for, so it costs nothing off.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "diag/forwarding_backend.h"
#include "diag/host_read.h"
#include "diag/locator.h"
#include "diag/tensor_stats.h"
#include "ops/backend.h"

namespace clawmine::diag {

struct TraceOptions {
  std::string jsonl_path;  // "" no JSON lines; "-" stderr; else a file (truncated)
};

// One tensor argument of an op; neg_inf_ok for masked scores that carry -inf by design.
struct TraceArg {
  const char* role;
  TensorView view;
  bool neg_inf_ok = false;
};

struct LayerSummary {
  std::string layer;        // "embed", "layers.0", ..., "head"
  int64_t ops = 0;
  float worst_amax = 0.0f;  // largest output amax
  std::string worst_op;
  int64_t non_finite_ops = 0;
  std::string first_non_finite_op;
};

class Tracer final : public ForwardingBackend {
 public:
  // `inner` must outlive the tracer; the tracer starts with inner's linear policy. Memory members
  // are forwarded untraced. On a backend whose device() is not the CPU, each traced op's float
  // inputs and outputs are downloaded for their stats (diag/host_read.h): one synchronization
  // per op, trace mode only.
  Tracer(ops::Backend& inner, TraceOptions options = {});

  // The first op (execution order) whose output went non-finite; empty while all stayed finite.
  const std::optional<NonFiniteFinding>& first_non_finite() const { return first_; }
  const std::vector<LayerSummary>& layers() const { return layers_; }
  int64_t op_count() const { return seq_; }
  // Per layer: op count, worst amax, non-finite ops; then the locator's finding (if any).
  std::string summary() const;

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
  struct Pending {
    std::string name;
    const char* op = "";
    std::vector<std::pair<std::string, TensorStats>> inputs;
  };
  // Stats of a float tensor (integer tensors and empty views: none), read back through inner_.
  TensorStats stats_of(const TraceArg& a);
  // Measures the float inputs before the op runs (in-place ops overwrite them).
  Pending begin(std::string name, const char* op, std::initializer_list<TraceArg> inputs);
  // Measures the float outputs, writes the JSON line, updates the summary and, on the first
  // non-finite output, asks the locator (`explain`) for the finding.
  void end(Pending p, std::initializer_list<TraceArg> outputs, const std::string& path,
           const std::function<NonFiniteFinding(NonFiniteFinding)>& explain = {});
  std::string op_name(const char* op) const;
  // The compute-path label of w under the current policy (scalars read back once per weight).
  std::string path_of(const ops::LinearWeight& w);
  // The locator's explanation of a linear on input x (read back again: error path only).
  NonFiniteFinding explain_linear_op(NonFiniteFinding f, const TensorView& x, const ops::LinearWeight& w);

  int64_t seq_ = 0;
  int64_t forward_ = -1;
  std::unique_ptr<std::ofstream> file_;
  bool to_stderr_ = false;
  std::vector<LayerSummary> layers_;
  std::optional<NonFiniteFinding> first_;
  WeightScalars scalars_;
};

}  // namespace clawmine::diag
