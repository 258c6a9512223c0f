// The tensor inventory walks the structure the way the binder does (model/deepseek_v4/binder.cpp:
// block -> attention by kind -> compressor / indexer, MoE by kind -> experts), in release names.
// Value rules (chosen so a 43-layer forward pass stays finite and non-degenerate, like the tiny
// fixtures' "looks trained" draw in docs/FIXTURES.md):
//   linears        dequantized RMS 1/sqrt(in_features) (scales chosen from the code tables' RMS)
//   norms          1 + 0.1 N            embed N(0, 1)            head N(0, 1/D)
//   hc_*_fn        N(0, 0.25/(4D))      hc_*_base 0.5 N          hc_*_scale U(0.1, 1)
//   attn_sink      0.5 N                ape 0.1 N                router bias 0.05 N
//   tid2eid        rows of distinct expert ids
//   input_scale    amax / 2688 with amax 8 (w1/w3: RMS-normed input) or 16 (w2: SwiGLU hidden)
#include "random_model/tensor_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>

#include "core/error.h"
#include "model/deepseek_v4/config.h"
#include "quant/quantizer.h"

namespace clawmine::tools {

namespace {

namespace dsv4 = model::deepseek_v4;

constexpr double kAmaxToInputScale = 6.0 * 448.0;  // ModelOpt: input_scale = amax / 2688
constexpr double kExpertInputAmax = 8.0;           // w1/w3 read the RMS-normed hidden state
constexpr double kExpertHiddenAmax = 16.0;         // w2 reads the clamped SwiGLU hidden

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct LinearDecl {
  std::string module;
  int64_t out = 0, in = 0;
};

// One shard before the linear formats are known: plain tensors and linears in binder order.
struct ShardDraft {
  std::string what;
  std::vector<TensorJob> tensors;
  std::vector<LinearDecl> linears;
};

class Drafter {
 public:
  explicit Drafter(const dsv4::ModelConfig& cfg) : cfg_(cfg) {}

  ShardDraft globals() {
    ShardDraft s;
    s.what = "embed/head";
    const int64_t V = cfg_.vocab_size, D = cfg_.hidden_size;
    normal(s, "embed.weight", DType::kBF16, {V, D}, 0.0, 1.0);
    normal(s, "head.weight", DType::kBF16, {V, D}, 0.0, 1.0 / std::sqrt(double(D)));
    norm(s, "norm.weight", D);
    hyper_connection(s, "hc_head", cfg_.hc_mult, 1);
    return s;
  }

  ShardDraft layer(int i) {
    const dsv4::AttentionKind kind = cfg_.layer_types[static_cast<size_t>(i)];
    const dsv4::MoeKind moe = cfg_.mlp_layer_types[static_cast<size_t>(i)];
    ShardDraft s;
    s.what = str_cat("layer ", i, " (", dsv4::attention_kind_name(kind), ", ", dsv4::moe_kind_name(moe), ")");
    const std::string p = str_cat("layers.", i);
    const int64_t D = cfg_.hidden_size, mix = cfg_.hc_mix_size();
    norm(s, p + ".attn_norm.weight", D);
    norm(s, p + ".ffn_norm.weight", D);
    hyper_connection(s, p + ".hc_attn", mix, 3);
    hyper_connection(s, p + ".hc_ffn", mix, 3);
    attention(s, p + ".attn", kind);
    ffn(s, p + ".ffn", moe);
    return s;
  }

 private:
  void attention(ShardDraft& s, const std::string& p, dsv4::AttentionKind kind) {
    const int64_t D = cfg_.hidden_size, H = cfg_.num_attention_heads, Dh = cfg_.head_dim;
    const int64_t Q = cfg_.q_lora_rank, G = cfg_.o_groups, Lo = cfg_.o_lora_rank;
    linear(s, p + ".wq_a", Q, D);
    norm(s, p + ".q_norm.weight", Q);
    linear(s, p + ".wq_b", H * Dh, Q);
    linear(s, p + ".wkv", Dh, D);
    norm(s, p + ".kv_norm.weight", Dh);
    linear(s, p + ".wo_a", G * Lo, H * Dh / G);
    linear(s, p + ".wo_b", D, G * Lo);
    normal(s, p + ".attn_sink", DType::kF32, {H}, 0.0, 0.5);
    if (kind == dsv4::AttentionKind::kCompressedSparse) {
      const int64_t rate = cfg_.compress_rate_csa, Hi = cfg_.index_n_heads, Di = cfg_.index_head_dim;
      compressor(s, p + ".compressor", 2, Dh, rate);
      linear(s, p + ".indexer.wq_b", Hi * Di, Q);
      linear(s, p + ".indexer.weights_proj", Hi, D);
      compressor(s, p + ".indexer.compressor", 2, Di, rate);
    } else if (kind == dsv4::AttentionKind::kHeavilyCompressed) {
      compressor(s, p + ".compressor", 1, Dh, cfg_.compress_rate_hca);
    }
  }

  // c = 2 (overlapping windows) for CSA and the indexer, 1 for HCA.
  void compressor(ShardDraft& s, const std::string& p, int64_t c, int64_t hd, int64_t rate) {
    const int64_t D = cfg_.hidden_size;
    linear(s, p + ".wkv", c * hd, D);
    linear(s, p + ".wgate", c * hd, D);
    normal(s, p + ".ape", DType::kF32, {rate, c * hd}, 0.0, 0.1);
    norm(s, p + ".norm.weight", hd);
  }

  void ffn(ShardDraft& s, const std::string& p, dsv4::MoeKind kind) {
    const int64_t D = cfg_.hidden_size, E = cfg_.n_routed_experts, K = cfg_.num_experts_per_tok;
    const int64_t I = cfg_.moe_intermediate_size;
    linear(s, p + ".gate", E, D);
    if (kind == dsv4::MoeKind::kHash) {
      TensorJob t{p + ".gate.tid2eid", DType::kI64, {cfg_.vocab_size, K}, {}};
      t.fill.kind = Fill::kTid2eid;
      t.fill.experts = E;
      s.tensors.push_back(std::move(t));
    } else {
      normal(s, p + ".gate.bias", DType::kF32, {E}, 0.0, 0.05);
    }
    for (int64_t e = 0; e < E; ++e) expert(s, str_cat(p, ".experts.", e), I);
    expert(s, p + ".shared_experts", I);
  }

  void expert(ShardDraft& s, const std::string& p, int64_t inter) {
    const int64_t D = cfg_.hidden_size;
    linear(s, p + ".w1", inter, D);
    linear(s, p + ".w3", inter, D);
    linear(s, p + ".w2", D, inter);
  }

  void hyper_connection(ShardDraft& s, const std::string& p, int64_t rows, int64_t scale_size) {
    const int64_t hc_dim = cfg_.hc_dim();
    normal(s, p + "_fn", DType::kF32, {rows, hc_dim}, 0.0, 0.5 / std::sqrt(double(hc_dim)));
    normal(s, p + "_base", DType::kF32, {rows}, 0.0, 0.5);
    TensorJob t{p + "_scale", DType::kF32, {scale_size}, {}};
    t.fill.kind = Fill::kUniform;
    t.fill.lo = 0.1;
    t.fill.hi = 1.0;
    s.tensors.push_back(std::move(t));
  }

  static void normal(ShardDraft& s, std::string name, DType dtype, Shape shape, double mean, double stddev) {
    TensorJob t{std::move(name), dtype, std::move(shape), {}};
    t.fill.kind = Fill::kNormal;
    t.fill.mean = mean;
    t.fill.stddev = stddev;
    s.tensors.push_back(std::move(t));
  }
  static void norm(ShardDraft& s, std::string name, int64_t dim) {
    normal(s, std::move(name), DType::kBF16, {dim}, 1.0, 0.1);
  }
  static void linear(ShardDraft& s, std::string module, int64_t out, int64_t in) {
    s.linears.push_back({std::move(module), out, in});
  }

  const dsv4::ModelConfig& cfg_;
};

TensorJob job(std::string name, DType dtype, Shape shape, Fill kind) {
  TensorJob t{std::move(name), dtype, std::move(shape), {}};
  t.fill.kind = kind;
  return t;
}

TensorJob scalar(std::string name, double value) {
  TensorJob t = job(std::move(name), DType::kF32, {}, Fill::kConst);
  t.fill.mean = value;
  return t;
}

// The stored tensors of one linear in the planned format; dequantized RMS = 1/sqrt(in).
void emit_linear(const LinearDecl& l, const quant::PlannedLinear& p, bool input_scales, std::vector<TensorJob>& out) {
  const double rms = 1.0 / std::sqrt(static_cast<double>(l.in));
  const std::string& m = l.module;
  switch (p.format) {
    case quant::LinearFormat::kKeep: {
      TensorJob w = job(m + ".weight", DType::kBF16, {l.out, l.in}, Fill::kNormal);
      w.fill.stddev = rms;
      out.push_back(std::move(w));
      return;
    }
    case quant::LinearFormat::kFp8Block: {
      out.push_back(job(m + ".weight", DType::kF8E4M3, {l.out, l.in}, Fill::kE4m3Code));
      TensorJob s = job(m + ".scale", DType::kF8E8M0, {ceil_div(l.out, quant::kFp8Block), ceil_div(l.in, quant::kFp8Block)},
                        Fill::kE8m0Scale);
      s.fill.log2_rms = std::log2(rms / e4m3_code_rms());
      out.push_back(std::move(s));
      return;
    }
    case quant::LinearFormat::kMxfp4: {
      out.push_back(job(m + ".weight", DType::kI8, {l.out, l.in / 2}, Fill::kE2m1Pair));  // the release's INT8
      TensorJob s = job(m + ".scale", DType::kF8E8M0, {l.out, l.in / quant::kMxfp4Group}, Fill::kE8m0Scale);
      s.fill.log2_rms = std::log2(rms / e2m1_code_rms());
      out.push_back(std::move(s));
      return;
    }
    case quant::LinearFormat::kNvfp4: {
      out.push_back(job(m + ".weight", DType::kU8, {l.out, l.in / 2}, Fill::kE2m1Pair));
      out.push_back(job(m + ".weight_scale", DType::kF8E4M3, {l.out, l.in / quant::kNvfp4Group}, Fill::kE4m3Scale));
      // w1 and w3 of an expert have the same in_features, so they share weight_scale_2 as
      // NVIDIA's exporter requires.
      out.push_back(scalar(m + ".weight_scale_2", rms / (e2m1_code_rms() * e4m3_scale_rms())));
      if (p.input_scale && input_scales) {
        const bool w2 = m.size() >= 3 && m.compare(m.size() - 3, 3, ".w2") == 0;
        out.push_back(scalar(m + ".input_scale", (w2 ? kExpertHiddenAmax : kExpertInputAmax) / kAmaxToInputScale));
      }
      return;
    }
    case quant::LinearFormat::kFp8BlockF32:
      break;
  }
  throw Error(str_cat("random model: module ", m, ": format ", quant::linear_format_name(p.format),
                      " is not produced by this tool"));
}

std::string shard_file(size_t index, size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buf;
}

quant::QuantizeOptions quantize_options(Layout layout) {
  quant::QuantizeOptions o;
  o.scheme = layout == Layout::kRelease ? quant::Scheme::kMxfp4Experts : quant::Scheme::kNvfp4Experts;
  o.fp8_scale = quant::ScaleDType::kE8M0;
  o.producer_version = "clawmine-random-model";
  return o;
}

}  // namespace

Layout parse_layout(const std::string& text, const std::string& flag) {
  if (text == "release") return Layout::kRelease;
  if (text == "nvfp4") return Layout::kNvfp4;
  throw Error(str_cat(flag, ": unknown layout \"", text, "\"; expected release or nvfp4"));
}

const char* layout_name(Layout l) { return l == Layout::kRelease ? "release" : "nvfp4"; }

int64_t TensorJob::row_len() const { return fill.kind == Fill::kTid2eid ? shape.back() : 1; }

int64_t TensorJob::units() const {
  const int64_t n = shape_numel(shape);
  return fill.kind == Fill::kTid2eid ? n / row_len() : n;  // packed E2M1: one unit per stored byte
}

size_t TensorJob::nbytes() const { return static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype); }

size_t Shard::nbytes() const {
  size_t n = 0;
  for (const TensorJob& t : tensors) n += t.nbytes();
  return n;
}

size_t ModelPlan::nbytes() const {
  size_t n = 0;
  for (const Shard& s : shards) n += s.nbytes();
  return n;
}

size_t ModelPlan::num_tensors() const {
  size_t n = 0;
  for (const Shard& s : shards) n += s.tensors.size();
  return n;
}

ModelPlan plan_model(const Geometry& g, Layout layout, const PlanOptions& options) {
  validate_geometry(g);
  ModelPlan plan;
  plan.geometry = g;
  plan.layout = layout;
  const nlohmann::json base = base_config_json(g);
  const std::string source = str_cat("<random ", g.name, " model>/config.json");
  // The model's own parser decides the layer kinds from the config, as the loader will.
  const dsv4::ModelConfig cfg = dsv4::parse_model_config(base.dump(), source);

  Drafter drafter(cfg);
  std::vector<ShardDraft> drafts;
  drafts.push_back(drafter.globals());
  for (int i = 0; i < cfg.num_hidden_layers; ++i) drafts.push_back(drafter.layer(i));

  // One plan over every linear of the model (hf_quant_config.json lists them all).
  std::vector<quant::SourceLinear> sources;
  for (const ShardDraft& d : drafts) {
    for (const LinearDecl& l : d.linears) {
      quant::SourceLinear s;
      s.name = l.module;
      s.out_features = l.out;
      s.in_features = l.in;
      sources.push_back(std::move(s));
    }
  }
  const quant::QuantizeOptions qopts = quantize_options(layout);
  quant::QuantizedModel described;
  described.plan = quant::plan_linears(sources, qopts);
  plan.config = quant::quantized_config_json(base, qopts);
  plan.hf_quant_config = quant::hf_quant_config_json(described, qopts);
  // Both files through the loader's parser: a config it would reject is an error here.
  dsv4::parse_model_config(plan.config.dump(), source,
                           plan.hf_quant_config.is_null() ? std::string() : plan.hf_quant_config.dump());

  size_t next = 0;
  for (size_t d = 0; d < drafts.size(); ++d) {
    Shard shard;
    shard.file = shard_file(d, drafts.size());
    shard.what = drafts[d].what;
    shard.tensors = std::move(drafts[d].tensors);
    for (const LinearDecl& l : drafts[d].linears) {
      const quant::PlannedLinear& p = described.plan[next++];
      CLAWMINE_CHECK(p.name == l.module, "plan order: ", p.name, " vs ", l.module);
      emit_linear(l, p, options.input_scales, shard.tensors);
    }
    // Widest element first: with the header padded to 8 bytes, every tensor is then aligned to
    // its element size inside the mapping.
    std::stable_sort(shard.tensors.begin(), shard.tensors.end(), [](const TensorJob& a, const TensorJob& b) {
      return dtype_size(a.dtype) > dtype_size(b.dtype);
    });
    plan.shards.push_back(std::move(shard));
  }
  return plan;
}

}  // namespace clawmine::tools
