// Scheme -> per-module plan -> quantized tensors -> files. Module roles come from release names;
// the formats per role and scheme are the table in docs/FIXTURES.md ("Quantized fixtures").
#include "quant/quantizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "io/safetensors.h"

namespace clawmine::quant {

namespace {

constexpr float kAmaxToInputScale = 6.0f * 448.0f;  // ModelOpt: input_scale = amax / 2688

enum class Role { kAttnFusible, kAttnOther, kWoA, kIndexerWqB, kShared, kRouted, kOther };

Role role_of(const std::string& name) {
  static const std::regex fusible(R"((^|\.)attn\.(wq_a|wkv)$)");
  static const std::regex attn(R"((^|\.)attn\.(wq_b|wo_b)$)");
  static const std::regex wo_a(R"((^|\.)attn\.wo_a$)");
  static const std::regex indexer(R"((^|\.)attn\.indexer\.wq_b$)");
  static const std::regex shared(R"((^|\.)ffn\.shared_experts\.w[123]$)");
  static const std::regex routed(R"((^|\.)ffn\.experts\.[0-9]+\.w[123]$)");
  if (std::regex_search(name, fusible)) return Role::kAttnFusible;
  if (std::regex_search(name, attn)) return Role::kAttnOther;
  if (std::regex_search(name, wo_a)) return Role::kWoA;
  if (std::regex_search(name, indexer)) return Role::kIndexerWqB;
  if (std::regex_search(name, shared)) return Role::kShared;
  if (std::regex_search(name, routed)) return Role::kRouted;
  return Role::kOther;
}

LinearFormat format_for(Role role, Scheme s) {
  const bool nv_attention = s == Scheme::kNvfp4All || s == Scheme::kNvfp4W4A16;
  switch (role) {
    case Role::kOther: return LinearFormat::kKeep;
    case Role::kAttnFusible:
    case Role::kAttnOther: return nv_attention ? LinearFormat::kNvfp4 : LinearFormat::kFp8Block;
    case Role::kWoA: return nv_attention ? LinearFormat::kFp8BlockF32 : LinearFormat::kFp8Block;
    case Role::kIndexerWqB:
    case Role::kShared: return LinearFormat::kFp8Block;
    case Role::kRouted:
      if (s == Scheme::kMxfp4Experts) return LinearFormat::kMxfp4;
      if (s == Scheme::kFp8Block) return LinearFormat::kFp8Block;
      return LinearFormat::kNvfp4;
  }
  return LinearFormat::kKeep;
}

// "layers.3.attn.wq_a" -> "layers.3.attn."
std::string parent_of(const std::string& name) { return name.substr(0, name.rfind('.') + 1); }

std::vector<float> decode_all(const SourceLinear& l) {
  std::vector<float> w(static_cast<size_t>(l.out_features * l.in_features));
  for (int64_t r = 0; r < l.out_features; ++r) l.decode_row(r, w.data() + r * l.in_features);
  for (float v : w) {
    if (!std::isfinite(v)) throw Error(str_cat("quantize: module ", l.name, " has a non-finite weight"));
  }
  return w;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

class Emitter {
 public:
  explicit Emitter(std::vector<OutputTensor>& out) : out_(out) {}

  void owned(std::string name, DType dtype, Shape shape, std::vector<uint8_t> bytes) {
    OutputTensor t;
    t.name = std::move(name);
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.bytes = std::move(bytes);
    out_.push_back(std::move(t));
  }
  void borrowed(std::string name, const TensorView& v) {
    OutputTensor t;
    t.name = std::move(name);
    t.dtype = v.dtype;
    t.shape = v.shape;
    t.borrowed = v.data;
    out_.push_back(std::move(t));
  }
  void scalars(const std::string& name, const std::vector<float>& v) {
    owned(name, DType::kF32, v.size() == 1 ? Shape{} : Shape{static_cast<int64_t>(v.size())}, f32_bytes(v));
  }

 private:
  std::vector<OutputTensor>& out_;
};

// Rows of a and b stacked: the NVFP4 global scale then covers both (w1/w3 sharing).
QuantizedWeight nvfp4_stacked(const std::vector<float>& a, const std::vector<float>& b, int64_t rows_a,
                              int64_t rows_b, int64_t in) {
  std::vector<float> w(a);
  w.insert(w.end(), b.begin(), b.end());
  return quantize_nvfp4(w.data(), rows_a + rows_b, in);
}

// Rows [r0, r1) of an NVFP4 weight as a weight of its own (same weight_scale_2).
QuantizedWeight nvfp4_rows(const QuantizedWeight& q, int64_t r0, int64_t r1) {
  QuantizedWeight p = q;
  const int64_t wb = q.weight_shape[1], sb = q.scale_shape[1];
  p.weight_shape = {r1 - r0, wb};
  p.scale_shape = {r1 - r0, sb};
  p.weight.assign(q.weight.begin() + r0 * wb, q.weight.begin() + r1 * wb);
  p.scale.assign(q.scale.begin() + r0 * sb, q.scale.begin() + r1 * sb);
  return p;
}

class InputScales {
 public:
  InputScales(const std::vector<PlannedLinear>& plan, const QuantizeOptions& o) : options_(o) {
    std::map<std::string, float> group_max;  // "layers.N.ffn.experts.*.w13" -> max amax
    float global_w13 = 0.0f, global_w2 = 0.0f;
    for (const PlannedLinear& p : plan) {
      if (!p.input_scale || role_of(p.name) != Role::kRouted) continue;
      const float a = amax(p.name);
      if (!(a > 0.0f)) continue;
      group_max[group(p.name)] = std::max(group_max[group(p.name)], a);
      (is_w2(p.name) ? global_w2 : global_w13) = std::max(is_w2(p.name) ? global_w2 : global_w13, a);
    }
    for (const PlannedLinear& p : plan) {
      if (!p.input_scale) continue;
      float a = amax(p.name);
      if (role_of(p.name) == Role::kRouted) {
        if (!is_w2(p.name)) a = std::max(a, amax(sibling(p.name)));  // w1 and w3 share their amax
        if (!(a > 0.0f)) {
          auto it = group_max.find(group(p.name));
          a = it != group_max.end() ? it->second : (is_w2(p.name) ? global_w2 : global_w13);
        }
      }
      if (!(a > 0.0f) || !std::isfinite(a)) {
        throw Error(str_cat("quantize: module ", p.name, " needs a calibrated input amax for its input_scale ",
                            "(scheme ", scheme_name(o.scheme), "); calibration gave ", a));
      }
      double scale = a / kAmaxToInputScale;
      if (multiplied(p.name)) scale *= o.input_scale_mult;
      scales_[p.name] = static_cast<float>(scale);
    }
  }

  float at(const std::string& name) const { return scales_.at(name); }
  const std::map<std::string, float>& all() const { return scales_; }

 private:
  float amax(const std::string& name) const {
    auto it = options_.input_amax.find(name);
    return it == options_.input_amax.end() ? 0.0f : it->second;
  }
  static bool is_w2(const std::string& name) { return name.size() >= 2 && name.compare(name.size() - 2, 2, "w2") == 0; }
  static std::string sibling(const std::string& name) {
    return name.substr(0, name.size() - 1) + (name.back() == '1' ? "3" : "1");
  }
  // "layers.N.ffn.experts." + projection group
  static std::string group(const std::string& name) {
    const std::string experts = name.substr(0, name.rfind(".ffn.experts.") + 13);
    return experts + (is_w2(name) ? "w2" : "w13");
  }
  bool multiplied(const std::string& name) const {
    if (options_.input_scale_mult_modules.empty()) return true;
    return std::any_of(options_.input_scale_mult_modules.begin(), options_.input_scale_mult_modules.end(),
                       [&](const std::string& g) { return glob_match(g, name); });
  }

  const QuantizeOptions& options_;
  std::map<std::string, float> scales_;
};

void emit_nvfp4(Emitter& e, const std::string& module, const QuantizedWeight& q, const std::vector<float>& ws2,
                const std::vector<float>* input_scale) {
  e.owned(module + ".weight", DType::kU8, q.weight_shape, q.weight);
  e.owned(module + ".weight_scale", DType::kF8E4M3, q.scale_shape, q.scale);
  e.scalars(module + ".weight_scale_2", ws2);
  if (input_scale) e.scalars(module + ".input_scale", *input_scale);
}

}  // namespace

Scheme parse_scheme(const std::string& text, const std::string& flag) {
  for (Scheme s : {Scheme::kMxfp4Experts, Scheme::kFp8Block, Scheme::kNvfp4Experts, Scheme::kNvfp4All,
                   Scheme::kNvfp4W4A16}) {
    if (text == scheme_name(s)) return s;
  }
  throw Error(str_cat(flag, ": unknown scheme \"", text,
                      "\"; expected nvfp4-experts, nvfp4-all, nvfp4-w4a16, fp8-block or mxfp4-experts"));
}

const char* scheme_name(Scheme s) {
  switch (s) {
    case Scheme::kMxfp4Experts: return "mxfp4-experts";
    case Scheme::kFp8Block: return "fp8-block";
    case Scheme::kNvfp4Experts: return "nvfp4-experts";
    case Scheme::kNvfp4All: return "nvfp4-all";
    case Scheme::kNvfp4W4A16: return "nvfp4-w4a16";
  }
  return "?";
}

bool scheme_has_input_scales(Scheme s) { return s == Scheme::kNvfp4Experts || s == Scheme::kNvfp4All; }

const char* linear_format_name(LinearFormat f) {
  switch (f) {
    case LinearFormat::kKeep: return "keep";
    case LinearFormat::kFp8Block: return "fp8-block";
    case LinearFormat::kFp8BlockF32: return "fp8-block-f32";
    case LinearFormat::kMxfp4: return "mxfp4";
    case LinearFormat::kNvfp4: return "nvfp4";
  }
  return "?";
}

bool glob_match(const std::string& pattern, const std::string& text) {
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::vector<PlannedLinear> plan_linears(const std::vector<SourceLinear>& linears, const QuantizeOptions& o) {
  if (!(o.input_scale_mult > 0.0 && o.input_scale_mult <= 1e6)) {
    throw Error(str_cat("--input-scale-mult: must be in (0, 1e6], got ", o.input_scale_mult));
  }
  const bool nv_attention = o.scheme == Scheme::kNvfp4All || o.scheme == Scheme::kNvfp4W4A16;
  if (o.fuse_wqa_wkv && !nv_attention) {
    throw Error(str_cat("--fuse-wqa-wkv: needs NVFP4 attention (scheme nvfp4-all or nvfp4-w4a16), got scheme ",
                        scheme_name(o.scheme)));
  }
  std::map<std::string, const SourceLinear*> by_name;
  for (const SourceLinear& l : linears) by_name[l.name] = &l;
  std::vector<PlannedLinear> plan;
  std::vector<std::string> problems;
  for (const SourceLinear& l : linears) {
    PlannedLinear p;
    p.name = l.name;
    const Role role = role_of(l.name);
    p.format = format_for(role, o.scheme);
    p.input_scale = p.format == LinearFormat::kNvfp4 && scheme_has_input_scales(o.scheme);
    if (p.format == LinearFormat::kMxfp4 && l.in_features % kMxfp4Group != 0) {
      problems.push_back(str_cat(l.name, ": MXFP4 needs in_features divisible by 32, got ", l.in_features));
    }
    if (p.format == LinearFormat::kNvfp4 && l.in_features % kNvfp4Group != 0) {
      problems.push_back(str_cat(l.name, ": NVFP4 needs in_features divisible by 16, got ", l.in_features));
    }
    if (o.fuse_wqa_wkv && role == Role::kAttnFusible) {
      const std::string parent = parent_of(l.name);
      const auto a = by_name.find(parent + "wq_a"), b = by_name.find(parent + "wkv");
      if (a == by_name.end() || b == by_name.end()) {
        problems.push_back(str_cat(l.name, ": --fuse-wqa-wkv needs both ", parent, "wq_a and ", parent, "wkv"));
      } else if (a->second->in_features != b->second->in_features) {
        problems.push_back(str_cat(l.name, ": --fuse-wqa-wkv needs wq_a and wkv with equal in_features"));
      }
      p.fused_name = parent + "fused_wqa_wkv";
    }
    plan.push_back(std::move(p));
  }
  if (!problems.empty()) {
    std::string msg = str_cat("quantize: scheme ", scheme_name(o.scheme), " cannot store ", problems.size(),
                              " module(s):");
    for (const std::string& s : problems) msg += "\n  " + s;
    throw Error(msg);
  }
  return plan;
}

QuantizedModel quantize_model(const std::vector<SourceLinear>& linears, const std::vector<SourceTensor>& tensors,
                              const QuantizeOptions& o) {
  QuantizedModel m;
  m.plan = plan_linears(linears, o);
  const InputScales scales(m.plan, o);
  m.input_scales = scales.all();
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < linears.size(); ++i) index[linears[i].name] = i;

  Emitter e(m.tensors);
  for (const SourceTensor& t : tensors) e.borrowed(t.name, t.view);

  std::map<std::string, QuantizedWeight> pending;  // w3 halves quantized together with their w1
  for (size_t i = 0; i < linears.size(); ++i) {
    const SourceLinear& l = linears[i];
    const PlannedLinear& p = m.plan[i];
    const int64_t out = l.out_features, in = l.in_features;
    switch (p.format) {
      case LinearFormat::kKeep:
        if (!l.dense.empty()) {
          e.borrowed(l.name + ".weight", l.dense);
        } else {
          e.owned(l.name + ".weight", DType::kF32, {out, in}, f32_bytes(decode_all(l)));
        }
        break;
      case LinearFormat::kFp8Block:
      case LinearFormat::kFp8BlockF32: {
        const bool f32 = p.format == LinearFormat::kFp8BlockF32 || o.fp8_scale == ScaleDType::kF32;
        const auto w = decode_all(l);
        QuantizedWeight q = quantize_fp8_block(w.data(), out, in, f32 ? ScaleDType::kF32 : ScaleDType::kE8M0);
        e.owned(l.name + ".weight", DType::kF8E4M3, q.weight_shape, std::move(q.weight));
        e.owned(l.name + (f32 ? ".weight_scale_inv" : ".scale"), q.scale_dtype, q.scale_shape, std::move(q.scale));
        break;
      }
      case LinearFormat::kMxfp4: {
        const auto w = decode_all(l);
        QuantizedWeight q = quantize_mxfp4(w.data(), out, in);
        e.owned(l.name + ".weight", DType::kI8, q.weight_shape, std::move(q.weight));  // the release's INT8
        e.owned(l.name + ".scale", DType::kF8E8M0, q.scale_shape, std::move(q.scale));
        break;
      }
      case LinearFormat::kNvfp4: {
        const Role role = role_of(l.name);
        if (!p.fused_name.empty()) {
          if (l.name != parent_of(l.name) + "wq_a") break;  // wkv is written with its wq_a
          const SourceLinear& kv = linears[index.at(parent_of(l.name) + "wkv")];
          const auto wa = decode_all(l), wb = decode_all(kv);
          const QuantizedWeight qa = quantize_nvfp4(wa.data(), out, in);
          const QuantizedWeight qb = quantize_nvfp4(wb.data(), kv.out_features, in);
          QuantizedWeight f = qa;
          f.weight_shape = {out + kv.out_features, in / 2};
          f.scale_shape = {out + kv.out_features, in / kNvfp4Group};
          f.weight.insert(f.weight.end(), qb.weight.begin(), qb.weight.end());
          f.scale.insert(f.scale.end(), qb.scale.begin(), qb.scale.end());
          std::vector<float> is;
          if (p.input_scale) is = {scales.at(l.name), scales.at(kv.name)};
          emit_nvfp4(e, p.fused_name, f, {qa.weight_scale_2, qb.weight_scale_2}, p.input_scale ? &is : nullptr);
          break;
        }
        QuantizedWeight q;
        const std::string sib = l.name.substr(0, l.name.size() - 1) + "3";
        if (role == Role::kRouted && l.name.back() == '3' && pending.count(l.name)) {
          q = std::move(pending.at(l.name));
          pending.erase(l.name);
        } else if (role == Role::kRouted && l.name.back() == '1' && index.count(sib) &&
                   m.plan[index.at(sib)].format == LinearFormat::kNvfp4) {
          const SourceLinear& up = linears[index.at(sib)];
          const QuantizedWeight both = nvfp4_stacked(decode_all(l), decode_all(up), out, up.out_features, in);
          q = nvfp4_rows(both, 0, out);
          pending[sib] = nvfp4_rows(both, out, out + up.out_features);
        } else {
          const auto w = decode_all(l);
          q = quantize_nvfp4(w.data(), out, in);
        }
        std::vector<float> is;
        if (p.input_scale) is = {scales.at(l.name)};
        emit_nvfp4(e, l.name, q, {q.weight_scale_2}, p.input_scale ? &is : nullptr);
        break;
      }
    }
  }
  if (!pending.empty()) throw Error(str_cat("quantize: ", pending.begin()->first, " (w3) came before its w1"));
  return m;
}

nlohmann::json quantized_config_json(const nlohmann::json& input_config, const QuantizeOptions& o) {
  nlohmann::json cfg = input_config;
  cfg.erase("quantization_config");
  cfg.erase("expert_dtype");
  nlohmann::json qc = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}};
  if (o.fp8_scale == ScaleDType::kE8M0) qc["scale_fmt"] = "ue8m0";
  qc["weight_block_size"] = {128, 128};
  if (o.scheme == Scheme::kMxfp4Experts) cfg["expert_dtype"] = "fp4";
  if (o.scheme != Scheme::kMxfp4Experts && o.scheme != Scheme::kFp8Block) qc["moe_quant_algo"] = "NVFP4";
  cfg["quantization_config"] = qc;
  return cfg;
}

nlohmann::json hf_quant_config_json(const QuantizedModel& m, const QuantizeOptions& o) {
  if (o.scheme == Scheme::kMxfp4Experts || o.scheme == Scheme::kFp8Block) return nullptr;
  const bool w4a16 = o.scheme == Scheme::kNvfp4W4A16;
  const char* layer_algo = w4a16 ? "W4A16_NVFP4" : "NVFP4";
  nlohmann::json layers = nlohmann::json::object();
  for (const PlannedLinear& p : m.plan) {
    if (p.format != LinearFormat::kNvfp4) continue;
    layers[p.fused_name.empty() ? p.name : p.fused_name] = {{"quant_algo", layer_algo}, {"group_size", 16}};
  }
  nlohmann::json exclude;
  if (o.scheme == Scheme::kNvfp4Experts) {  // NVIDIA's DSV4 recipe (quant-numerics.md §1.8)
    exclude = {"*.attn.*", "*.attn_norm.*", "*.ffn.shared_experts.*", "*.ffn.gate.*", "*.ffn_norm.*",
               "embed.weight", "head.weight", "*.hc_*", "norm.weight"};
  } else {
    exclude = {"*.attn.wo_a", "*.attn.q_norm.*", "*.attn.kv_norm.*", "*.attn.attn_sink", "*.attn.compressor.*",
               "*.attn.indexer.*", "*.attn_norm.*", "*.ffn.shared_experts.*", "*.ffn.gate.*", "*.ffn_norm.*",
               "embed.weight", "head.weight", "*.hc_*", "norm.weight"};
  }
  nlohmann::json q = {{"quant_algo", w4a16 ? "W4A16_NVFP4" : "MIXED_PRECISION"},
                      {"kv_cache_quant_algo", nullptr},
                      {"group_size", 16},
                      {"exclude_modules", exclude},
                      {"quantized_layers", layers}};
  return {{"producer", {{"name", "clawmine"}, {"version", o.producer_version}}}, {"quantization", q}};
}

void write_quantized_checkpoint(const std::filesystem::path& out_dir, const QuantizedModel& m,
                                const nlohmann::json& input_config, const QuantizeOptions& o) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) throw Error(str_cat("--out: cannot create directory ", out_dir.string(), ": ", ec.message()));
  std::vector<io::TensorToWrite> list;
  for (const OutputTensor& t : m.tensors) list.push_back({t.name, t.dtype, t.shape, t.data()});
  io::write_safetensors(out_dir / "model.safetensors", list,
                        {{"format", "pt"}, {"producer", "clawmine quantize"}, {"scheme", scheme_name(o.scheme)}});
  auto write_json = [&](const std::string& file, const nlohmann::json& j) {
    std::ofstream f(out_dir / file);
    f << j.dump(2) << "\n";
    if (!f) throw Error(str_cat("--out: cannot write ", (out_dir / file).string()));
  };
  write_json("config.json", quantized_config_json(input_config, o));
  const nlohmann::json hf = hf_quant_config_json(m, o);
  if (!hf.is_null()) write_json("hf_quant_config.json", hf);
}

}  // namespace clawmine::quant
