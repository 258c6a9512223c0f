// The binder walks the model structure the config describes (layer by layer, by attention
// and MoE kind) and asks for each tensor by its release name; name_map turns that into the
// checkpoint's spelling. Linear weight formats are recognized from dtypes and the companion
// scale tensors present (dense, FP8 block, MXFP4, NVFP4). Problems are collected, not thrown
// one by one, so a broken checkpoint is diagnosed in one run.
#include "model/deepseek_v4/binder.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/log.h"

namespace clawmine::model::deepseek_v4 {

namespace {

using DTypes = std::vector<DType>;
using Shapes = std::vector<Shape>;

const DTypes kFloat = {DType::kBF16, DType::kF16, DType::kF32};
const DTypes kF32 = {DType::kF32};
const DTypes kIndex = {DType::kI64, DType::kI32};
const DTypes kFp8Scale = {DType::kF8E8M0, DType::kF32};
const DTypes kE8m0 = {DType::kF8E8M0};
const DTypes kE4m3 = {DType::kF8E4M3};
const Shapes kScalar = {Shape{}, Shape{1}};
constexpr int64_t kFp8Block = 128;
constexpr int64_t kMxfp4Group = 32;
constexpr int64_t kNvfp4Group = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string dtypes_str(const DTypes& dtypes) {
  std::string s;
  for (DType t : dtypes) s += (s.empty() ? "" : "|") + std::string(dtype_name(t));
  return s;
}

std::string shapes_str(const Shapes& shapes) {
  std::string s;
  for (const Shape& sh : shapes) s += (s.empty() ? "" : " or ") + shape_str(sh);
  return s;
}

bool contains(const DTypes& dtypes, DType t) { return std::find(dtypes.begin(), dtypes.end(), t) != dtypes.end(); }
bool contains(const Shapes& shapes, const Shape& s) { return std::find(shapes.begin(), shapes.end(), s) != shapes.end(); }

class Binder {
 public:
  Binder(const io::Checkpoint& ckpt, const ModelConfig& cfg, NamingScheme scheme)
      : ckpt_(ckpt), cfg_(cfg), scheme_(scheme) {}

  std::vector<std::string>& problems() { return problems_; }
  const std::set<std::string>& consumed() const { return consumed_; }

  // The checkpoint tensor holding release-named `name`, or nullptr; marks it consumed.
  const io::TensorInfo* lookup(const std::string& name) {
    for (const std::string& candidate : checkpoint_names(scheme_, name)) {
      if (const io::TensorInfo* t = ckpt_.find(candidate)) {
        consumed_.insert(candidate);
        return t;
      }
    }
    return nullptr;
  }

  std::string primary_name(const std::string& name) const { return checkpoint_names(scheme_, name).front(); }

  void missing(const std::string& name, const DTypes& dtypes, const Shapes& shapes) {
    problems_.push_back(str_cat(primary_name(name), " [not in ", ckpt_.dir().string(), "]: expected ",
                                dtypes_str(dtypes), " ", shapes_str(shapes), ", found nothing"));
  }

  // Checks dtype and shape; records one problem line when either is off.
  bool check(const io::TensorInfo& t, const DTypes& dtypes, const Shapes& shapes) {
    if (contains(dtypes, t.dtype) && contains(shapes, t.shape)) return true;
    problems_.push_back(str_cat(t.name, " [", t.file, "]: expected ", dtypes_str(dtypes), " ", shapes_str(shapes),
                                ", found ", dtype_name(t.dtype), " ", shape_str(t.shape)));
    return false;
  }

  TensorView tensor(const std::string& name, const DTypes& dtypes, const Shapes& shapes) {
    const io::TensorInfo* t = lookup(name);
    if (!t) {
      missing(name, dtypes, shapes);
      return {};
    }
    return check(*t, dtypes, shapes) ? t->view() : TensorView{};
  }
  TensorView tensor(const std::string& name, const DTypes& dtypes, const Shape& shape) {
    return tensor(name, dtypes, Shapes{shape});
  }

  TensorView optional_tensor(const std::string& name, const DTypes& dtypes, const Shapes& shapes) {
    const io::TensorInfo* t = lookup(name);
    return t && check(*t, dtypes, shapes) ? t->view() : TensorView{};
  }

  // `shards` > 1: a fused checkpoint module whose NVFP4 weight_scale_2 / input_scale may hold
  // one value per shard ([shards]) instead of one shared value.
  LinearWeight linear(const std::string& module, int64_t out, int64_t in, int64_t shards = 1) {
    LinearWeight lw;
    lw.name = module;
    lw.out_features = out;
    lw.in_features = in;
    const std::string wname = module + ".weight";
    const io::TensorInfo* w = lookup(wname);
    if (!w) {
      missing(wname, {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3, DType::kU8, DType::kI8},
              {Shape{out, in}});
      return lw;
    }
    if (contains(kFloat, w->dtype)) {
      lw.format = WeightFormat::kDense;
      if (check(*w, kFloat, {Shape{out, in}})) lw.weight = w->view();
    } else if (w->dtype == DType::kF8E4M3) {
      lw.format = WeightFormat::kFp8Block;
      const bool ok = check(*w, kE4m3, {Shape{out, in}});
      lw.scale = fp8_block_scale(module, out, in);
      if (ok) lw.weight = w->view();
    } else if (w->dtype == DType::kU8 || w->dtype == DType::kI8) {
      bind_fp4(lw, *w, shards);
    } else {
      problems_.push_back(str_cat(w->name, " [", w->file, "]: expected BF16|F16|F32 (dense), F8_E4M3 (FP8 block) or ",
                                  "U8|I8 (packed FP4) ", shape_str({out, in}), ", found ", dtype_name(w->dtype), " ",
                                  shape_str(w->shape)));
    }
    return lw;
  }

  // FP8 128x128 block scales [ceil(out/128), ceil(in/128)]: the release's `.scale` (E8M0, or F32),
  // `.weight_scale_inv` (F32, transformers/sglang), or ModelOpt FP8_PB_WO's `.weight_scale`, F32
  // 2-D or 4-D [out_blk, 1, in_blk, 1]; the 4-D form is handed out as a 2-D view of the same bytes.
  TensorView fp8_block_scale(const std::string& module, int64_t out, int64_t in) {
    const Shape blocks = {ceil_div(out, kFp8Block), ceil_div(in, kFp8Block)};
    if (lookup_exists(module + ".scale")) return tensor(module + ".scale", kFp8Scale, blocks);
    const io::TensorInfo* t = lookup(module + ".weight_scale");
    if (!t) {
      missing(module + ".scale", kFp8Scale, {blocks});
      return {};
    }
    const Shape four_d = {blocks[0], 1, blocks[1], 1};
    if (!check(*t, kFp8Scale, {blocks, four_d})) return {};
    return t->view().reshaped(blocks);
  }

  // Packed FP4 [out, in/2]: NVFP4 when a ModelOpt E4M3 `weight_scale` is present, else MXFP4.
  void bind_fp4(LinearWeight& lw, const io::TensorInfo& w, int64_t shards) {
    const int64_t out = lw.out_features, in = lw.in_features;
    const DTypes packed = {DType::kU8, DType::kI8};
    const io::TensorInfo* nv_scale = lookup(lw.name + ".weight_scale");
    // A weight_scale_2 marks NVFP4 even when the block scales are missing (reported as such).
    if ((nv_scale && nv_scale->dtype != DType::kF8E8M0) || (!nv_scale && lookup_exists(lw.name + ".weight_scale_2"))) {
      lw.format = WeightFormat::kNvfp4;
      const bool ok = check(w, packed, {Shape{out, in / 2}}) && in % kNvfp4Group == 0;
      if (in % kNvfp4Group != 0) {
        problems_.push_back(str_cat(w.name, " [", w.file, "]: NVFP4 needs in_features (", in, ") divisible by 16"));
      }
      const Shape scale_shape = {out, in / kNvfp4Group};
      if (!nv_scale) {
        missing(lw.name + ".weight_scale", kE4m3, {scale_shape});
      } else if (check(*nv_scale, kE4m3, {scale_shape})) {
        lw.scale = nv_scale->view();
      }
      const Shapes global_shapes = shards > 1 ? Shapes{Shape{}, Shape{1}, Shape{shards}} : kScalar;
      lw.weight_scale_2 = tensor(lw.name + ".weight_scale_2", kF32, global_shapes);
      lw.input_scale = optional_tensor(lw.name + ".input_scale", kF32, global_shapes);
      if (ok) lw.weight = w.view();
      return;
    }
    lw.format = WeightFormat::kMxfp4;
    const bool ok = check(w, packed, {Shape{out, in / 2}}) && in % kMxfp4Group == 0;
    if (in % kMxfp4Group != 0) {
      problems_.push_back(str_cat(w.name, " [", w.file, "]: MXFP4 needs in_features (", in, ") divisible by 32"));
    }
    if (nv_scale) {  // an E8M0 `weight_scale`: MXFP4 under ModelOpt-style naming
      if (check(*nv_scale, kE8m0, {Shape{out, in / kMxfp4Group}})) lw.scale = nv_scale->view();
    } else {
      lw.scale = tensor(lw.name + ".scale", kE8m0, Shape{out, in / kMxfp4Group});
    }
    if (ok) lw.weight = w.view();
  }

  HyperConnectionWeights hyper_connection(const std::string& prefix, int64_t rows, int64_t scale_size) {
    HyperConnectionWeights hc;
    hc.fn = tensor(prefix + "_fn", kF32, Shape{rows, cfg_.hc_dim()});
    hc.base = tensor(prefix + "_base", kF32, Shape{rows});
    hc.scale = tensor(prefix + "_scale", kF32, Shape{scale_size});
    return hc;
  }

  // c = 2 (overlapping windows) for CSA and the indexer, 1 for HCA.
  CompressorWeights compressor(const std::string& prefix, int64_t c, int64_t hd, int64_t rate) {
    const int64_t D = cfg_.hidden_size;
    CompressorWeights cw;
    cw.wkv = linear(prefix + ".wkv", c * hd, D);
    cw.wgate = linear(prefix + ".wgate", c * hd, D);
    cw.ape = tensor(prefix + ".ape", kF32, Shape{rate, c * hd});
    cw.norm = tensor(prefix + ".norm.weight", kFloat, Shape{hd});
    return cw;
  }

  AttentionWeights attention(const std::string& p, AttentionKind kind) {
    const int64_t D = cfg_.hidden_size, H = cfg_.num_attention_heads, Dh = cfg_.head_dim;
    const int64_t Q = cfg_.q_lora_rank, G = cfg_.o_groups, Lo = cfg_.o_lora_rank;
    AttentionWeights a;
    const bool fused = lookup_exists(p + ".fused_wqa_wkv.weight");
    if (fused) {
      fused_wqa_wkv(p, a);
    } else {
      a.wq_a = linear(p + ".wq_a", Q, D);
      a.wkv = linear(p + ".wkv", Dh, D);
    }
    a.q_norm = tensor(p + ".q_norm.weight", kFloat, Shape{Q});
    a.wq_b = linear(p + ".wq_b", H * Dh, Q);
    a.kv_norm = tensor(p + ".kv_norm.weight", kFloat, Shape{Dh});
    a.wo_a = linear(p + ".wo_a", G * Lo, H * Dh / G);
    a.wo_b = linear(p + ".wo_b", D, G * Lo);
    a.attn_sink = tensor(p + ".attn_sink", kF32, Shape{H});
    if (kind == AttentionKind::kCompressedSparse) {
      const int64_t rate = cfg_.compress_rate_csa, Hi = cfg_.index_n_heads, Di = cfg_.index_head_dim;
      a.compressor = compressor(p + ".compressor", 2, Dh, rate);
      IndexerWeights ix;
      ix.wq_b = linear(p + ".indexer.wq_b", Hi * Di, Q);
      ix.weights_proj = linear(p + ".indexer.weights_proj", Hi, D);
      ix.compressor = compressor(p + ".indexer.compressor", 2, Di, rate);
      a.indexer = std::move(ix);
    } else if (kind == AttentionKind::kHeavilyCompressed) {
      a.compressor = compressor(p + ".compressor", 1, Dh, cfg_.compress_rate_hca);
    }
    return a;
  }

  // `attn.fused_wqa_wkv` (the seed's layout): wq_a rows [0, Q) then wkv rows [Q, Q+Dh) in one
  // module. Each shard becomes its own LinearWeight over a row slice of the weight and block
  // scales; a per-shard weight_scale_2 / input_scale ([2]) gives each shard its own element
  // (exact, no max over shards), a scalar one is shared.
  void fused_wqa_wkv(const std::string& p, AttentionWeights& a) {
    const int64_t D = cfg_.hidden_size, Q = cfg_.q_lora_rank, Dh = cfg_.head_dim;
    const std::string fused = p + ".fused_wqa_wkv";
    for (const char* part : {".wq_a", ".wkv"}) {
      if (lookup_exists(p + part + ".weight")) {
        problems_.push_back(str_cat(primary_name(p + part + ".weight"), " [", ckpt_.dir().string(),
                                    "]: present next to ", primary_name(fused + ".weight"),
                                    "; a checkpoint stores wq_a/wkv either fused or separate, not both"));
      }
    }
    const LinearWeight f = linear(fused, Q + Dh, D, 2);
    a.wq_a = shard(f, p + ".wq_a", 0, Q, 0);
    a.wkv = shard(f, p + ".wkv", Q, Q + Dh, 1);
  }

  LinearWeight shard(const LinearWeight& f, const std::string& name, int64_t begin, int64_t end, int64_t index) {
    LinearWeight s = f;
    s.name = name;
    s.fused_name = f.name;
    s.out_features = end - begin;
    if (!f.weight.empty()) s.weight = f.weight.slice0(begin, end);
    if (!f.scale.empty() && f.format == WeightFormat::kFp8Block) {
      if (begin % kFp8Block == 0) {
        s.scale = f.scale.slice0(begin / kFp8Block, ceil_div(end, kFp8Block));
      } else {
        s.scale = {};
        problems_.push_back(str_cat(primary_name(f.name + ".weight"), ": FP8 block-scaled shard ", name,
                                    " starts at row ", begin, ", not on a 128-row scale block boundary"));
      }
    } else if (!f.scale.empty()) {
      s.scale = f.scale.slice0(begin, end);
    }
    s.weight_scale_2 = shard_element(f.weight_scale_2, index);
    s.input_scale = shard_element(f.input_scale, index);
    return s;
  }

  // Element `index` of a per-shard [n] array as a scalar view; a one-value tensor is shared.
  static TensorView shard_element(const TensorView& t, int64_t index) {
    if (t.empty() || t.numel() == 1) return t;
    TensorView e = t;
    e.shape = {};
    e.data = static_cast<uint8_t*>(t.data) + static_cast<size_t>(index) * dtype_size(t.dtype);
    return e;
  }

  ExpertWeights expert(const std::string& p, int64_t inter) {
    const int64_t D = cfg_.hidden_size;
    return {linear(p + ".w1", inter, D), linear(p + ".w3", inter, D), linear(p + ".w2", D, inter)};
  }

  // Transformers' fused experts: gate_up_proj [E, 2I, D], down_proj [E, D, I]; views per expert.
  bool fused_experts(int layer, const std::string& p, std::vector<ExpertWeights>& experts) {
    const FusedExpertNames names = fused_expert_names(layer);
    const io::TensorInfo* gate_up = ckpt_.find(names.gate_up);
    const io::TensorInfo* down = ckpt_.find(names.down);
    if (!gate_up && !down) return false;
    const int64_t E = cfg_.n_routed_experts, I = cfg_.moe_intermediate_size, D = cfg_.hidden_size;
    struct Fused {
      const io::TensorInfo* t;
      const std::string& name;
      Shape shape;
    };
    bool ok = true;
    for (const Fused& f : {Fused{gate_up, names.gate_up, {E, 2 * I, D}}, Fused{down, names.down, {E, D, I}}}) {
      if (!f.t) {
        problems_.push_back(str_cat(f.name, " [not in ", ckpt_.dir().string(), "]: expected ", dtypes_str(kFloat),
                                    " ", shape_str(f.shape), ", found nothing"));
        ok = false;
      } else {
        consumed_.insert(f.t->name);
        if (!contains(kFloat, f.t->dtype)) {
          problems_.push_back(str_cat(f.name, " [", f.t->file, "]: ", dtype_name(f.t->dtype),
                                      ": quantized fused experts in transformers naming are not supported; "
                                      "store quantized routed experts per expert in the release naming "
                                      "(layers.N.ffn.experts.E.w1/w2/w3)"));
          ok = false;
          continue;
        }
        ok = check(*f.t, kFloat, {f.shape}) && ok;
      }
    }
    if (!ok) return true;
    const TensorView gu = gate_up->view(), dn = down->view();
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = str_cat(p, ".ffn.experts.", e);
      const TensorView gu_e = gu.slice0(e, e + 1).reshaped({2 * I, D});
      ExpertWeights& ew = experts[static_cast<size_t>(e)];
      ew.w1 = fused_view(ep + ".w1", gu_e.slice0(0, I));
      ew.w3 = fused_view(ep + ".w3", gu_e.slice0(I, 2 * I));
      ew.w2 = fused_view(ep + ".w2", dn.slice0(e, e + 1).reshaped({D, I}));
    }
    return true;
  }

  static LinearWeight fused_view(const std::string& name, const TensorView& v) {
    LinearWeight lw;
    lw.name = name;
    lw.out_features = v.dim(0);
    lw.in_features = v.dim(1);
    lw.format = WeightFormat::kDense;
    lw.weight = v;
    return lw;
  }

  MoeWeights moe(const std::string& p, int layer, MoeKind kind) {
    const int64_t D = cfg_.hidden_size, E = cfg_.n_routed_experts, K = cfg_.num_experts_per_tok;
    const int64_t I = cfg_.moe_intermediate_size;
    MoeWeights m;
    m.gate = linear(p + ".ffn.gate", E, D);
    if (kind == MoeKind::kHash) {
      m.tid2eid = tensor(p + ".ffn.gate.tid2eid", kIndex, Shape{cfg_.vocab_size, K});
    } else {
      m.gate_bias = tensor(p + ".ffn.gate.bias", kF32, Shape{E});
    }
    m.experts.resize(static_cast<size_t>(E));
    const bool per_expert = lookup_exists(p + ".ffn.experts.0.w1.weight");
    if (scheme_ != NamingScheme::kTransformers || layer < 0 || per_expert || !fused_experts(layer, p, m.experts)) {
      for (int64_t e = 0; e < E; ++e) m.experts[static_cast<size_t>(e)] = expert(str_cat(p, ".ffn.experts.", e), I);
    }
    m.shared_experts = expert(p + ".ffn.shared_experts", I * cfg_.n_shared_experts);
    return m;
  }

  bool lookup_exists(const std::string& name) const {
    for (const std::string& candidate : checkpoint_names(scheme_, name)) {
      if (ckpt_.find(candidate)) return true;
    }
    return false;
  }

  // One decoder block; `layer` < 0 for the MTP block (no fused-expert lookup).
  LayerWeights block(const std::string& p, int layer, AttentionKind attn, MoeKind moe_kind) {
    const int64_t D = cfg_.hidden_size, mix = cfg_.hc_mix_size();
    LayerWeights lw;
    lw.attn_norm = tensor(p + ".attn_norm.weight", kFloat, Shape{D});
    lw.ffn_norm = tensor(p + ".ffn_norm.weight", kFloat, Shape{D});
    lw.hc_attn = hyper_connection(p + ".hc_attn", mix, 3);
    lw.hc_ffn = hyper_connection(p + ".hc_ffn", mix, 3);
    lw.attn = attention(p + ".attn", attn);
    lw.ffn = moe(p, layer, moe_kind);
    return lw;
  }

  MtpWeights mtp() {
    const int64_t D = cfg_.hidden_size;
    const std::string p = "mtp.0";
    MtpWeights m;
    m.e_proj = linear(p + ".e_proj", D, D);
    m.h_proj = linear(p + ".h_proj", D, D);
    m.enorm = tensor(p + ".enorm.weight", kFloat, Shape{D});
    m.hnorm = tensor(p + ".hnorm.weight", kFloat, Shape{D});
    m.norm = tensor(p + ".norm.weight", kFloat, Shape{D});
    m.hc_head = hyper_connection(p + ".hc_head", cfg_.hc_mult, 1);
    m.block = block(p, -1, cfg_.mtp_layer_type, MoeKind::kRouted);
    return m;
  }

 private:
  const io::Checkpoint& ckpt_;
  const ModelConfig& cfg_;
  NamingScheme scheme_;
  std::vector<std::string> problems_;
  std::set<std::string> consumed_;
};

bool is_mtp_name(const std::string& name) { return name.rfind("mtp.", 0) == 0; }

std::string joined(const std::vector<std::string>& lines, const char* sep) {
  std::string s;
  for (const std::string& l : lines) s += (s.empty() ? "" : sep) + l;
  return s;
}

void warn_unused(const io::Checkpoint& ckpt, const std::vector<std::string>& unused) {
  constexpr size_t kMaxListed = 50;
  std::vector<std::string> listed(unused.begin(), unused.begin() + std::min(unused.size(), kMaxListed));
  std::string more = unused.size() > kMaxListed ? str_cat(" ... and ", unused.size() - kMaxListed, " more") : "";
  log_warn("bind", "checkpoint ", ckpt.dir().string(), ": ", unused.size(), " tensor(s) not used: ",
           joined(listed, ", "), more);
}

}  // namespace

BoundModel bind_weights(const io::Checkpoint& ckpt, const ModelConfig& cfg, BindOptions options) {
  CLAWMINE_CHECK(cfg.o_groups > 0 && static_cast<int64_t>(cfg.layer_types.size()) == cfg.num_hidden_layers &&
                     static_cast<int64_t>(cfg.mlp_layer_types.size()) == cfg.num_hidden_layers,
                 "model config ", cfg.source, " is not resolved");
  BoundModel bound;
  bound.naming = detect_naming_scheme(ckpt);
  Binder b(ckpt, cfg, bound.naming);
  ModelWeights& w = bound.weights;
  const int64_t V = cfg.vocab_size, D = cfg.hidden_size;

  w.embed = b.tensor("embed.weight", kFloat, Shape{V, D});
  if (const io::TensorInfo* head = b.lookup("head.weight"); head || !cfg.tie_word_embeddings) {
    w.head = b.tensor("head.weight", kFloat, Shape{V, D});
  } else {
    w.head = w.embed;
  }
  w.norm = b.tensor("norm.weight", kFloat, Shape{D});
  w.hc_head = b.hyper_connection("hc_head", cfg.hc_mult, 1);
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    w.layers.push_back(b.block(str_cat("layers.", i), i, cfg.layer_types[static_cast<size_t>(i)],
                               cfg.mlp_layer_types[static_cast<size_t>(i)]));
  }
  if (!b.problems().empty()) {
    throw Error(str_cat("checkpoint ", ckpt.dir().string(), " (", naming_scheme_name(bound.naming), " naming): ",
                        b.problems().size(), " problem(s) binding weights for config ", cfg.source, ":\n  ",
                        joined(b.problems(), "\n  ")));
  }

  const std::vector<std::string> names = ckpt.names();
  const bool has_mtp = std::any_of(names.begin(), names.end(), is_mtp_name);
  bool skip_mtp_names = !options.bind_mtp;
  if (options.bind_mtp && has_mtp) {
    MtpWeights m = b.mtp();
    if (b.problems().empty()) {
      w.mtp = std::move(m);
    } else {
      bound.mtp_problem = joined(b.problems(), "; ");
      skip_mtp_names = true;
      log_warn("bind", "checkpoint ", ckpt.dir().string(), ": MTP block incomplete, not bound: ", bound.mtp_problem);
    }
  } else if (!has_mtp) {
    log_info("bind", "checkpoint ", ckpt.dir().string(), " has no MTP block (mtp.*)");
  }

  for (const std::string& n : names) {
    if (b.consumed().count(n) || (skip_mtp_names && is_mtp_name(n))) continue;
    bound.unused.push_back(n);
  }
  if (options.warn_unused && !bound.unused.empty()) warn_unused(ckpt, bound.unused);
  return bound;
}

}  // namespace clawmine::model::deepseek_v4
