#include "diag/trace.h"

#include <cstdio>
#include <iostream>

#include "core/dtype.h"
#include "core/error.h"
#include "diag/linear_path.h"

namespace clawmine::diag {
namespace {

TensorStats stats_of(const TraceArg& a) {
  if (a.view.empty() || a.view.dtype != DType::kF32) return {};
  return tensor_stats(a.view.f32(), a.view.numel(), a.neg_inf_ok);
}

// "layers.3.attn.indexer" -> "layers.3"; "embed" / "head" stay.
std::string layer_of(const std::string& scope) {
  if (scope.rfind("layers.", 0) != 0) return scope.substr(0, scope.find('.'));
  const auto dot = scope.find('.', 7);
  return dot == std::string::npos ? scope : scope.substr(0, dot);
}

nlohmann::json shape_json(const TensorView& v) { return v.shape; }

// Experts: a weight with NaN/Inf is named; otherwise the generic explanation.
NonFiniteFinding explain_experts(NonFiniteFinding f, const std::vector<ops::ExpertWeights>& experts) {
  for (const ops::ExpertWeights& e : experts)
    for (const ops::LinearWeight* w : {&e.w1, &e.w3, &e.w2})
      if (f.inputs_finite && first_non_finite_weight_row(*w) >= 0) {
        f.cause = str_cat("weight ", w->name, " holds NaN/Inf");
        f.message = str_cat(f.op_name, " (", f.path, "): ", f.cause);
        return f;
      }
  explain_generic(f);
  return f;
}

}  // namespace

Tracer::Tracer(ops::Backend& inner, TraceOptions options) : inner_(inner) {
  policy_ = inner.linear_policy();
  if (options.jsonl_path == "-") {
    to_stderr_ = true;
  } else if (!options.jsonl_path.empty()) {
    file_ = std::make_unique<std::ofstream>(options.jsonl_path, std::ios::trunc);
    if (!*file_) throw Error(str_cat("trace: cannot open ", options.jsonl_path, " for writing"));
  }
}

void Tracer::set_linear_policy(const ops::LinearPolicy& policy) {
  policy_ = policy;
  inner_.set_linear_policy(policy);
}

void Tracer::set_scope(std::string_view scope) {
  scope_.assign(scope);
  inner_.set_scope(scope);
}

std::string Tracer::op_name(const char* op) const { return str_cat(scope_, ".", op); }

Tracer::Pending Tracer::begin(std::string name, const char* op, std::initializer_list<TraceArg> inputs) const {
  Pending p{std::move(name), op, {}};
  for (const TraceArg& a : inputs)
    if (!a.view.empty() && a.view.dtype == DType::kF32) p.inputs.emplace_back(a.role, stats_of(a));
  return p;
}

void Tracer::end(Pending p, std::initializer_list<TraceArg> outputs, const std::string& path,
                 const std::function<NonFiniteFinding(NonFiniteFinding)>& explain) {
  const int64_t seq = seq_++;
  TensorStats out;
  nlohmann::json outs = nlohmann::json::object();
  const TraceArg& main = *outputs.begin();
  for (const TraceArg& a : outputs) {
    if (a.view.empty() || a.view.dtype != DType::kF32) continue;
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
    if (it == layers_.end()) layers_.push_back({layer});
    else std::rotate(it, it + 1, layers_.end());  // keep the current layer last
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

void Tracer::embed(const TensorView& table, const std::vector<int32_t>& ids, const TensorView& out) {
  ++forward_;
  Pending p = begin(scope_ == "embed" ? scope_ : op_name("embed"), "embed", {});
  inner_.embed(table, ids, out);
  end(std::move(p), {{"out", out}}, "", [&](NonFiniteFinding f) {
    explain_embed(f, ids, out);
    return f;
  });
}

void Tracer::rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) {
  Pending p = begin(op_name("rms_norm"), "rms_norm", {{"x", x}});
  inner_.rms_norm(x, weight, eps, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) {
  Pending p = begin(linear_display_name(w), "linear", {{"x", x}});
  inner_.linear(x, w, out);
  end(std::move(p), {{"out", out}}, linear_path(policy_, w).label, [&](NonFiniteFinding f) {
    explain_linear(f, policy_, w, x.f32(), x.numel() / w.in_features);
    return f;
  });
}

void Tracer::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) {
  Pending p = begin(linear_display_name(w), "grouped_linear", {{"x", x}});
  inner_.grouped_linear(x, w, groups, out);
  end(std::move(p), {{"out", out}}, linear_path(policy_, w).label, [&](NonFiniteFinding f) {
    explain_linear(f, policy_, w, x.f32(), x.numel() / w.in_features);
    return f;
  });
}

void Tracer::rope(const TensorView& x, const std::vector<int64_t>& positions, const std::vector<float>& inv_freq,
                  int64_t rope_dim, bool inverse) {
  Pending p = begin(op_name(inverse ? "rope_inverse" : "rope"), "rope", {{"x", x}});
  inner_.rope(x, positions, inv_freq, rope_dim, inverse);
  end(std::move(p), {{"out", x}}, "");
}

void Tracer::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  Pending p = begin(op_name("add"), "add", {{"a", a}, {"b", b}});
  inner_.add(a, b, out);
  end(std::move(p), {{"out", out}}, "");
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

void Tracer::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& idx,
                              const TensorView& sink, float scale, const TensorView& out) {
  Pending p = begin(op_name("sparse_attention"), "sparse_attention", {{"q", q}, {"kv", kv}, {"sink", sink}});
  inner_.sparse_attention(q, kv, idx, sink, scale, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::compress_pool(const TensorView& kv, const TensorView& score, const TensorView& out) {
  Pending p = begin(op_name("compress_pool"), "compress_pool", {{"kv", kv}, {"score", score, true}});
  inner_.compress_pool(kv, score, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                            const std::vector<int64_t>& n_valid, const TensorView& scores) {
  Pending p = begin(op_name("indexer_scores"), "indexer_scores", {{"q", q}, {"keys", keys}, {"weights", weights}});
  inner_.indexer_scores(q, keys, weights, n_valid, scores);
  end(std::move(p), {{"scores", scores, true}}, "");
}

void Tracer::topk(const TensorView& values, int64_t k, const TensorView& out) {
  Pending p = begin(op_name("topk"), "topk", {{"values", values, true}});
  inner_.topk(values, k, out);
  end(std::move(p), {{"out", out}}, "");
}

void Tracer::moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                       const std::vector<int32_t>& ids, float routed_scaling, const TensorView& idx,
                       const TensorView& weight) {
  Pending p = begin(op_name("moe_route"), "moe_route", {{"logits", logits}});
  inner_.moe_route(logits, bias, tid2eid, ids, routed_scaling, idx, weight);
  end(std::move(p), {{"weight", weight}, {"idx", idx}}, "");
}

void Tracer::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                         const TensorView& weight, float swiglu_limit, const TensorView& out) {
  Pending p = begin(op_name("experts"), "moe_experts", {{"x", x}, {"weight", weight}});
  inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);
  end(std::move(p), {{"out", out}}, experts.empty() ? "" : linear_path(policy_, experts[0].w1).label,
      [&](NonFiniteFinding f) { return explain_experts(std::move(f), experts); });
}

void Tracer::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) {
  Pending p = begin(op_name("shared_experts"), "swiglu_mlp", {{"x", x}});
  inner_.swiglu_mlp(x, w, swiglu_limit, out);
  end(std::move(p), {{"out", out}}, linear_path(policy_, w.w1).label,
      [&](NonFiniteFinding f) { return explain_experts(std::move(f), {w}); });
}

}  // namespace clawmine::diag
