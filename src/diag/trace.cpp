#include "diag/trace.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "core/dtype.h"
#include "core/error.h"
#include "diag/linear_path.h"

namespace clawmine::diag {
namespace {

// "layers.3.attn.indexer" -> "layers.3"; "embed" / "head" stay.
std::string layer_of(const std::string& scope) {
  if (scope.rfind("layers.", 0) != 0) return scope.substr(0, scope.find('.'));
  const auto dot = scope.find('.', 7);
  return dot == std::string::npos ? scope : scope.substr(0, dot);
}

nlohmann::json shape_json(const TensorView& v) { return v.shape; }

// Experts: a weight with NaN/Inf is named (each decoded on the host, downloaded first when it
// lives on a device: error path only); otherwise the generic explanation.
NonFiniteFinding explain_experts(NonFiniteFinding f, ops::Backend& be, const std::vector<ops::ExpertWeights>& experts) {
  if (f.inputs_finite)
    for (const ops::ExpertWeights& e : experts)
      for (const ops::LinearWeight* w : {&e.w1, &e.w3, &e.w2})
        if (first_non_finite_weight_row(HostLinearWeight(be, *w).get()) >= 0) {
          f.cause = str_cat("weight ", w->name, " holds NaN/Inf");
          f.message = str_cat(f.op_name, " (", f.path, "): ", f.cause);
          return f;
        }
  explain_generic(f);
  return f;
}

const char* qdq_label(ops::Qdq kind) {
  switch (kind) {
    case ops::Qdq::kNone: return "none";
    case ops::Qdq::kFp8Nope: return "fp8 e4m3 per 64 (nope dims)";
    case ops::Qdq::kHadamardFp4: return "hadamard + fp4 e2m1 per 32";
  }
  return "?";
}

}  // namespace

Tracer::Tracer(ops::Backend& inner, TraceOptions options) : ForwardingBackend(inner), scalars_(inner) {
  scope_ = "model";
  if (options.jsonl_path == "-") {
    to_stderr_ = true;
  } else if (!options.jsonl_path.empty()) {
    file_ = std::make_unique<std::ofstream>(options.jsonl_path, std::ios::trunc);
    if (!*file_) throw Error(str_cat("trace: cannot open ", options.jsonl_path, " for writing"));
  }
}

std::string Tracer::op_name(const char* op) const { return str_cat(scope_, ".", op); }

TensorStats Tracer::stats_of(const TraceArg& a) {
  if (a.view.empty() || !is_float_dtype(a.view.dtype)) return {};
  const HostF32 h(inner_, a.view);
  return tensor_stats(h.data(), h.size(), a.neg_inf_ok);
}

Tracer::Pending Tracer::begin(std::string name, const char* op, std::initializer_list<TraceArg> inputs) {
  Pending p{std::move(name), op, {}};
  for (const TraceArg& a : inputs)
    if (!a.view.empty() && is_float_dtype(a.view.dtype)) p.inputs.emplace_back(a.role, stats_of(a));
  return p;
}

std::string Tracer::path_of(const ops::LinearWeight& w) { return linear_path(policy_, scalars_.with_host_scalars(w)).label; }

NonFiniteFinding Tracer::explain_linear_op(NonFiniteFinding f, const TensorView& x, const ops::LinearWeight& w) {
  const HostF32 xs(inner_, x);
  const HostLinearWeight hw(inner_, w);
  explain_linear(f, policy_, hw.get(), xs.data(), xs.size() / w.in_features);
  return f;
}

void Tracer::end(Pending p, std::initializer_list<TraceArg> outputs, const std::string& path,
                 const std::function<NonFiniteFinding(NonFiniteFinding)>& explain) {
  const int64_t seq = seq_++;
  TensorStats out;
  nlohmann::json outs = nlohmann::json::object();
  const TraceArg& main = *outputs.begin();
  for (const TraceArg& a : outputs) {
    if (a.view.empty() || !is_float_dtype(a.view.dtype)) continue;
    const TensorStats s = stats_of(a);
    out.merge(s);
    outs[a.role] = s.to_json();
  }
  if (file_ || to_stderr_) {
    nlohmann::json in = nlohmann::json::object();
    for (const auto& [role, s] : p.inputs) in[role] = s.to_json();
    nlohmann::json line = {{"seq", seq}, {"forward", forward_}, {"name", p.name}, {"op", p.op},
                           {"scope", scope_}, {"shape", shape_json(main.view)},
                           {"dtype", std::string(dtype_name(main.view.dtype))}, {"path", path}};
    line["amax"] = out.amax;
    line["rms"] = out.rms();
    line["mean"] = out.mean();
    line["nan"] = out.nan;
    line["inf"] = out.inf;
    line["inputs"] = in;
    line["outputs"] = outs;
    if (to_stderr_) std::cerr << line.dump() << '\n';
    else *file_ << line.dump() << '\n';
  }
  const std::string layer = layer_of(scope_);
  if (layers_.empty() || layers_.back().layer != layer) {
    auto it = std::find_if(layers_.begin(), layers_.end(), [&](const LayerSummary& l) { return l.layer == layer; });
    if (it == layers_.end()) {
      layers_.emplace_back();
      layers_.back().layer = layer;
    } else {
      std::rotate(it, it + 1, layers_.end());  // keep the current layer last
    }
  }
  LayerSummary& L = layers_.back();
  ++L.ops;
  if (out.amax > L.worst_amax || L.worst_op.empty()) {
    L.worst_amax = std::max(L.worst_amax, out.amax);
    if (out.amax >= L.worst_amax) L.worst_op = p.name;
  }
  if (!out.all_finite()) {
    if (L.non_finite_ops++ == 0) L.first_non_finite_op = p.name;
    if (!first_) {
      NonFiniteFinding f;
      f.seq = seq;
      f.forward = forward_;
      f.op_name = p.name;
      f.op = p.op;
      f.path = path;
      f.inputs = p.inputs;
      f.output = out;
      for (const auto& [role, s] : p.inputs) f.inputs_finite = f.inputs_finite && s.all_finite();
      if (explain) f = explain(std::move(f));
      else explain_generic(f);
      first_ = std::move(f);
    }
  }
}

std::string Tracer::summary() const {
  std::string s = str_cat("trace: ", seq_, " ops in ", forward_ + 1, " forward pass(es)\n");
  for (const LayerSummary& L : layers_)
    s += str_cat("  ", L.layer, ": ", L.ops, " ops, worst amax ", short_num(L.worst_amax), " (", L.worst_op, ")",
                 L.non_finite_ops ? str_cat(", ", L.non_finite_ops, " non-finite ops, first ", L.first_non_finite_op)
                                  : std::string(), "\n");
  s += first_ ? str_cat("first non-finite op: ", first_->message, "\n") : "all op outputs finite\n";
  return s;
}

void Tracer::embed(const TensorView& table, const TensorView& ids, const TensorView& out) {
  ++forward_;
  Pending p = begin(scope_ == "embed" ? scope_ : op_name("embed"), "embed", {});
  inner_.embed(table, ids, out);
  end(std::move(p), {{"out", out}}, "", [&](NonFiniteFinding f) {
    const HostF32 o(inner_, out);
    explain_embed(f, host_i32(inner_, ids), o.view());
    return f;
  });
}

void Tracer::hc_expand(const TensorView& e, const TensorView& X) {
  Pending p = begin(op_name("hc_expand"), "hc_expand", {{"e", e}});
  inner_.hc_expand(e, X);
  end(std::move(p), {{"X", X}}, "");
}

void Tracer::rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) {
  Pending p = begin(op_name("rms_norm"), "rms_norm", {{"x", x}});
  inner_.rms_norm(x, weight, eps, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) {
  Pending p = begin(linear_display_name(w), "linear", {{"x", x}});
  inner_.linear(x, w, out);
  end(std::move(p), {{"out", out}}, path_of(w),
      [&](NonFiniteFinding f) { return explain_linear_op(std::move(f), x, w); });
}

void Tracer::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) {
  Pending p = begin(linear_display_name(w), "grouped_linear", {{"x", x}});
  inner_.grouped_linear(x, w, groups, out);
  end(std::move(p), {{"out", out}}, path_of(w),
      [&](NonFiniteFinding f) { return explain_linear_op(std::move(f), x, w); });
}

void Tracer::rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
                  bool inverse) {
  Pending p = begin(op_name(inverse ? "rope_inverse" : "rope"), "rope", {{"x", x}});
  inner_.rope(x, positions, inv_freq, rope_dim, inverse);
  end(std::move(p), {{"out", x}}, "");
}

// Integer output, no float inputs: named and counted, nothing read back.
void Tracer::iota(const TensorView& out, int64_t start, int64_t step) {
  Pending p = begin(op_name("iota"), "iota", {});
  inner_.iota(out, start, step);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  Pending p = begin(op_name("add"), "add", {{"a", a}, {"b", b}});
  inner_.add(a, b, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) {
  Pending p = begin(op_name("qdq"), "qdq", {{"x", x}});
  inner_.qdq(x, kind, n_nope);
  end(std::move(p), {{"out", x}}, qdq_label(kind));
}

void Tracer::hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& hp,
                    const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  Pending p = begin(op_name("hc_pre"), "hc_pre", {{"X", X}});
  inner_.hc_pre(X, w, hp, x_in, post, comb);
  end(std::move(p), {{"x_in", x_in}, {"post", post}, {"comb", comb}}, "");
}

void Tracer::hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                     const TensorView& X_out) {
  Pending p = begin(op_name("hc_post"), "hc_post", {{"y", y}, {"X", X}, {"post", post}, {"comb", comb}});
  inner_.hc_post(y, X, post, comb, X_out);
  end(std::move(p), {{"X_out", X_out}}, "");
}

void Tracer::hc_head(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& hp,
                     const TensorView& y) {
  Pending p = begin(op_name("hc_head"), "hc_head", {{"X", X}});
  inner_.hc_head(X, w, hp, y);
  end(std::move(p), {{"y", y}}, "");
}

// Integer output (key rows, -1 padded): named and counted, no float stats.
void Tracer::attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                             int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) {
  Pending p = begin(op_name("attention_index"), "attention_index", {});
  inner_.attention_index(positions, n_prev, window, entry_base, n_entries, rate, selected, idx);
  end(std::move(p), {{"idx", idx}}, "");
}

void Tracer::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries,
                              const TensorView& idx, const TensorView& sink, float scale, const TensorView& out) {
  Pending p = begin(op_name("sparse_attention"), "sparse_attention",
                    {{"q", q}, {"kv", kv}, {"entries", entries}, {"sink", sink}});
  inner_.sparse_attention(q, kv, entries, idx, sink, scale, out);
  end(std::move(p), {{"out", out}}, "");
}

// The carried state is not measured: its rows beyond the current window's are undefined.
void Tracer::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                            const TensorView& positions, int64_t rate, bool overlap,
                            const ops::CompressorStateView& state, const TensorView& pooled,
                            const TensorView& entry_positions) {
  Pending p = begin(op_name("compress_chunk"), "compress_chunk", {{"kv", kv}, {"gate", gate}});
  inner_.compress_chunk(kv, gate, ape, positions, rate, overlap, state, pooled, entry_positions);
  end(std::move(p), {{"pooled", pooled}}, "");
}

void Tracer::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                            float weight_scale, const TensorView& positions, int64_t rate, const TensorView& scores) {
  Pending p = begin(op_name("indexer_scores"), "indexer_scores", {{"q", q}, {"keys", keys}, {"weights", weights}});
  inner_.indexer_scores(q, keys, weights, weight_scale, positions, rate, scores);
  end(std::move(p), {{"scores", scores, true}}, "");
}

void Tracer::topk(const TensorView& values, int64_t k, const TensorView& out) {
  Pending p = begin(op_name("topk"), "topk", {{"values", values, true}});
  inner_.topk(values, k, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::argmax_rows(const TensorView& values, const TensorView& out) {
  Pending p = begin(op_name("argmax_rows"), "argmax_rows", {{"values", values, true}});
  inner_.argmax_rows(values, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                       const TensorView& ids, float routed_scaling, const TensorView& idx, const TensorView& weight) {
  Pending p = begin(op_name("moe_route"), "moe_route", {{"logits", logits}});
  inner_.moe_route(logits, bias, tid2eid, ids, routed_scaling, idx, weight);
  end(std::move(p), {{"weight", weight}, {"idx", idx}}, "");
}

void Tracer::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                         const TensorView& weight, float swiglu_limit, const TensorView& out) {
  Pending p = begin(op_name("experts"), "moe_experts", {{"x", x}, {"weight", weight}});
  inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);
  end(std::move(p), {{"out", out}}, experts.empty() ? "" : path_of(experts[0].w1),
      [&](NonFiniteFinding f) { return explain_experts(std::move(f), inner_, experts); });
}

void Tracer::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) {
  Pending p = begin(op_name("shared_experts"), "swiglu_mlp", {{"x", x}});
  inner_.swiglu_mlp(x, w, swiglu_limit, out);
  end(std::move(p), {{"out", out}}, path_of(w.w1),
      [&](NonFiniteFinding f) { return explain_experts(std::move(f), inner_, {w}); });
}

}  // namespace clawmine::diag
