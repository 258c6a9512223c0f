// Tiny checkpoint writer. Tensors are generated in one fixed order from one random stream in
// both namings; the transformers naming is spelled out here independently of the engine's
// name table (src/model/deepseek_v4/name_map.cpp), so tests of that table are not circular.
#include "support/tiny_checkpoint.h"

#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace clawmine::test {

namespace md = model::deepseek_v4;

namespace {

// kAttnFp4: wq_a, wkv, wq_b, wo_b (NVFP4 in the seed layouts, FP8 otherwise); kWoA: wo_a (F32
// block scales in the seed layouts, E8M0 otherwise).
enum class LinearKind { kDense, kFp8, kExpert, kAttnFp4, kWoA };
enum class Store { kBf16, kFp8E8m0, kFp8F32, kMxfp4, kNvfp4 };

const char* layer_type_json(md::AttentionKind k) {
  switch (k) {
    case md::AttentionKind::kSliding: return "sliding_attention";
    case md::AttentionKind::kCompressedSparse: return "compressed_sparse_attention";
    case md::AttentionKind::kHeavilyCompressed: return "heavily_compressed_attention";
  }
  return "?";
}

class Generator {
 public:
  Generator(const md::ModelConfig& cfg, const TinyCheckpointOptions& opts) : cfg_(cfg), opts_(opts), rng_(opts.seed) {}

  std::vector<TinyTensor> take() { return std::move(out_); }

  void all() {
    const int64_t V = cfg_.vocab_size, D = cfg_.hidden_size;
    floats("embed.weight", "model.embed_tokens.weight", DType::kBF16, {V, D});
    floats("head.weight", "lm_head.weight", DType::kBF16, {V, D});
    floats("norm.weight", "model.norm.weight", DType::kBF16, {D});
    floats("hc_head_fn", "model.hc_head.hc_fn", DType::kF32, {cfg_.hc_mult, cfg_.hc_dim()});
    floats("hc_head_base", "model.hc_head.hc_base", DType::kF32, {cfg_.hc_mult});
    floats("hc_head_scale", "model.hc_head.hc_scale", DType::kF32, {1});
    for (int i = 0; i < cfg_.num_hidden_layers; ++i) {
      layer(str_cat("layers.", i, "."), str_cat("model.layers.", i, "."), cfg_.layer_types[static_cast<size_t>(i)],
            cfg_.mlp_layer_types[static_cast<size_t>(i)]);
    }
    if (opts_.mtp) mtp();
  }

 private:
  bool hf() const { return opts_.naming == TinyNaming::kTransformers; }
  bool quantized() const { return opts_.quant != TinyQuant::kDense; }
  bool seed_layout() const { return opts_.quant == TinyQuant::kSeed || opts_.quant == TinyQuant::kW4A16; }

  Store store_of(LinearKind kind) const {
    if (kind == LinearKind::kDense || !quantized()) return Store::kBf16;
    if (kind == LinearKind::kFp8) return Store::kFp8E8m0;
    if (kind == LinearKind::kWoA) return seed_layout() ? Store::kFp8F32 : Store::kFp8E8m0;
    if (kind == LinearKind::kAttnFp4) return seed_layout() ? Store::kNvfp4 : Store::kFp8E8m0;
    return opts_.quant == TinyQuant::kFp8Mxfp4 ? Store::kMxfp4 : Store::kNvfp4;
  }

  void push(std::string name, DType dtype, Shape shape, std::vector<uint8_t> bytes) {
    out_.push_back({std::move(name), dtype, std::move(shape), std::move(bytes)});
  }

  std::vector<uint8_t> random_bytes(DType dtype, const Shape& shape) {
    const size_t n = static_cast<size_t>(shape_numel(shape));
    std::vector<uint8_t> bytes(n * dtype_size(dtype));
    std::normal_distribution<float> normal(0.0f, 0.5f);
    for (size_t i = 0; i < n; ++i) {
      const float v = normal(rng_);
      if (dtype == DType::kF32) {
        std::memcpy(&bytes[i * 4], &v, 4);
      } else if (dtype == DType::kBF16) {
        const uint16_t h = f32_to_bf16(v);
        std::memcpy(&bytes[i * 2], &h, 2);
      } else if (dtype == DType::kF8E4M3) {
        uint8_t b = static_cast<uint8_t>(rng_());
        if ((b & 0x7f) == 0x7f) b ^= 1;  // 0x7f / 0xff are NaN
        bytes[i] = b;
      } else if (dtype == DType::kF8E8M0) {
        bytes[i] = static_cast<uint8_t>(120 + rng_() % 8);  // 2^-7 .. 1
      } else {
        bytes[i] = static_cast<uint8_t>(rng_());  // packed FP4: any byte is two valid codes
      }
    }
    return bytes;
  }

  void floats(const std::string& rel, const std::string& hf_name, DType dtype, Shape shape) {
    std::vector<uint8_t> bytes = random_bytes(dtype, shape);
    push(hf() ? hf_name : rel, dtype, std::move(shape), std::move(bytes));
  }

  // Distinct expert ids per row (a row of equal ids would hide routing bugs).
  void tid2eid(const std::string& rel, const std::string& hf_name) {
    const int64_t V = cfg_.vocab_size, K = cfg_.num_experts_per_tok, E = cfg_.n_routed_experts;
    std::vector<uint8_t> bytes(static_cast<size_t>(V * K) * 8);
    for (int64_t r = 0; r < V; ++r) {
      const int64_t start = static_cast<int64_t>(rng_() % static_cast<uint32_t>(E));
      for (int64_t j = 0; j < K; ++j) {
        const int64_t id = (start + j) % E;
        std::memcpy(&bytes[static_cast<size_t>(r * K + j) * 8], &id, 8);
      }
    }
    push(hf() ? hf_name : rel, DType::kI64, {V, K}, std::move(bytes));
  }

  // `rel` / `hf_name` are module names; the suffixes follow the naming and the format.
  // `second_shard`: wkv, which gets its own NVFP4 global scales under per_shard_scales.
  void linear(const std::string& rel, const std::string& hf_name, int64_t out, int64_t in, LinearKind kind,
              bool second_shard = false) {
    const std::string m = hf() ? hf_name : rel;
    const Store store = store_of(kind);
    if (store == Store::kBf16) {
      floats(m + ".weight", m + ".weight", DType::kBF16, {out, in});
    } else if (store == Store::kFp8E8m0) {
      push(m + ".weight", DType::kF8E4M3, {out, in}, random_bytes(DType::kF8E4M3, {out, in}));
      const Shape s = {(out + 127) / 128, (in + 127) / 128};
      push(m + (hf() ? ".weight_scale_inv" : ".scale"), DType::kF8E8M0, s, random_bytes(DType::kF8E8M0, s));
    } else if (store == Store::kFp8F32) {
      push(m + ".weight", DType::kF8E4M3, {out, in}, random_bytes(DType::kF8E4M3, {out, in}));
      const int64_t ob = (out + 127) / 128, ib = (in + 127) / 128;
      std::vector<uint8_t> bytes(static_cast<size_t>(ob * ib) * 4);
      std::uniform_real_distribution<float> uniform(1.0f / 128, 1.0f);
      for (size_t i = 0; i < bytes.size() / 4; ++i) {
        const float v = uniform(rng_);
        std::memcpy(&bytes[i * 4], &v, 4);
      }
      if (opts_.wo_a_modelopt_4d) {
        push(m + ".weight_scale", DType::kF32, {ob, 1, ib, 1}, std::move(bytes));
      } else {
        push(m + ".weight_scale_inv", DType::kF32, {ob, ib}, std::move(bytes));
      }
    } else if (store == Store::kMxfp4) {
      push(m + ".weight", DType::kI8, {out, in / 2}, random_bytes(DType::kI8, {out, in / 2}));
      const Shape s = {out, in / 32};
      push(m + (hf() ? ".weight_scale_inv" : ".scale"), DType::kF8E8M0, s, random_bytes(DType::kF8E8M0, s));
    } else {
      if (in % 16 != 0) throw Error(str_cat("tiny checkpoint: NVFP4 ", m, " needs in_features % 16 == 0, got ", in));
      push(m + ".weight", DType::kU8, {out, in / 2}, random_bytes(DType::kU8, {out, in / 2}));
      std::vector<uint8_t> scales(static_cast<size_t>(out * in / 16));
      for (uint8_t& b : scales) b = static_cast<uint8_t>(0x30 + rng_() % 16);  // E4M3 0.125 .. 0.47
      push(m + ".weight_scale", DType::kF8E4M3, {out, in / 16}, std::move(scales));
      const bool own = second_shard && opts_.per_shard_scales;
      scalar(m + ".weight_scale_2", own ? 0.02f : 0.01f);
      if (opts_.quant != TinyQuant::kW4A16) scalar(m + ".input_scale", own ? 0.003f : 0.002f);
    }
  }

  // Replaces the tensors of wq_a (out_[a0, a1)) and wkv (out_[k0, k1)) by one fused module:
  // weights and block scales concatenated by rows, global scales shared or per shard ([2]).
  void fuse(const std::string& fused, const std::string& wq_a, const std::string& wkv, size_t a0, size_t a1,
            size_t k0, size_t k1) {
    if (a1 - a0 != k1 - k0) throw Error("tiny checkpoint: wq_a and wkv are stored differently, cannot fuse");
    std::vector<TinyTensor> merged;
    for (size_t i = 0; i < a1 - a0; ++i) {
      const TinyTensor& a = out_[a0 + i];
      const TinyTensor& k = out_[k0 + i];
      const std::string suffix = a.name.substr(wq_a.size());
      if (k.name != wkv + suffix) throw Error(str_cat("tiny checkpoint: cannot pair ", a.name, " with ", k.name));
      TinyTensor f{fused + suffix, a.dtype, a.shape, a.bytes};
      if (a.shape.empty()) {
        if (opts_.per_shard_scales) {
          f.shape = {2};
          f.bytes.insert(f.bytes.end(), k.bytes.begin(), k.bytes.end());
        } else if (a.bytes != k.bytes) {
          throw Error(str_cat("tiny checkpoint: ", a.name, " and ", k.name, " differ; fusing needs per_shard_scales"));
        }
      } else if (suffix == ".scale" || suffix == ".weight_scale_inv" || a.dtype == DType::kF32) {
        throw Error("tiny checkpoint: fused wq_a/wkv needs row-wise scales (NVFP4 or dense)");
      } else {
        f.shape[0] += k.shape[0];
        f.bytes.insert(f.bytes.end(), k.bytes.begin(), k.bytes.end());
      }
      merged.push_back(std::move(f));
    }
    out_.erase(out_.begin() + static_cast<std::ptrdiff_t>(k0), out_.begin() + static_cast<std::ptrdiff_t>(k1));
    out_.erase(out_.begin() + static_cast<std::ptrdiff_t>(a0), out_.begin() + static_cast<std::ptrdiff_t>(a1));
    for (TinyTensor& t : merged) out_.push_back(std::move(t));
  }

  void scalar(const std::string& name, float v) {
    std::vector<uint8_t> bytes(4);
    std::memcpy(bytes.data(), &v, 4);
    push(name, DType::kF32, {}, std::move(bytes));
  }

  void compressor(const std::string& r, const std::string& h, const std::string& h_norm, int64_t c, int64_t hd,
                  int64_t rate) {
    const int64_t D = cfg_.hidden_size;
    linear(r + "wkv", h + "kv_proj", c * hd, D, LinearKind::kDense);
    linear(r + "wgate", h + "gate_proj", c * hd, D, LinearKind::kDense);
    floats(r + "ape", h + "position_bias", DType::kF32, {rate, c * hd});
    floats(r + "norm.weight", h_norm, DType::kBF16, {hd});
  }

  void attention(const std::string& r, const std::string& h, md::AttentionKind kind) {
    const int64_t D = cfg_.hidden_size, H = cfg_.num_attention_heads, Dh = cfg_.head_dim, Q = cfg_.q_lora_rank;
    const int64_t G = cfg_.o_groups, Lo = cfg_.o_lora_rank;
    const size_t a0 = out_.size();
    linear(r + "wq_a", h + "q_a_proj", Q, D, LinearKind::kAttnFp4);
    const size_t a1 = out_.size();
    floats(r + "q_norm.weight", h + "q_a_norm.weight", DType::kBF16, {Q});
    linear(r + "wq_b", h + "q_b_proj", H * Dh, Q, LinearKind::kAttnFp4);
    const size_t k0 = out_.size();
    linear(r + "wkv", h + "kv_proj", Dh, D, LinearKind::kAttnFp4, true);
    const size_t k1 = out_.size();
    floats(r + "kv_norm.weight", h + "kv_norm.weight", DType::kBF16, {Dh});
    linear(r + "wo_a", h + "o_a_proj", G * Lo, H * Dh / G, LinearKind::kWoA);
    linear(r + "wo_b", h + "o_b_proj", D, G * Lo, LinearKind::kAttnFp4);
    if (opts_.fused_wqa_wkv) {
      if (hf() || !seed_layout()) throw Error("tiny checkpoint: fused_wqa_wkv needs release naming and kSeed/kW4A16");
      fuse(r + "fused_wqa_wkv", r + "wq_a", r + "wkv", a0, a1, k0, k1);
    }
    floats(r + "attn_sink", h + "sinks", DType::kF32, {H});
    if (kind == md::AttentionKind::kCompressedSparse) {
      const int64_t rate = cfg_.compress_rate_csa, Hi = cfg_.index_n_heads, Di = cfg_.index_head_dim;
      compressor(r + "compressor.", h + "compressor.", h + "compressor.kv_norm.weight", 2, Dh, rate);
      const std::string hi = h + "compressor.indexer.";
      linear(r + "indexer.wq_b", hi + "q_b_proj", Hi * Di, Q, LinearKind::kFp8);
      linear(r + "indexer.weights_proj", hi + "scorer.weights_proj", Hi, D, LinearKind::kDense);
      compressor(r + "indexer.compressor.", hi, hi + "kv_norm.weight", 2, Di, rate);
    } else if (kind == md::AttentionKind::kHeavilyCompressed) {
      compressor(r + "compressor.", h + "compressor.", h + "compressor.kv_norm.weight", 1, Dh, cfg_.compress_rate_hca);
    }
  }

  void experts(const std::string& r, const std::string& h) {
    const int64_t E = cfg_.n_routed_experts, I = cfg_.moe_intermediate_size, D = cfg_.hidden_size;
    if (!(hf() && opts_.fused_experts && !quantized())) {
      for (int64_t e = 0; e < E; ++e) {
        const std::string re = str_cat(r, "experts.", e, "."), he = str_cat(h, "experts.", e, ".");
        linear(re + "w1", he + "gate_proj", I, D, LinearKind::kExpert);
        linear(re + "w3", he + "up_proj", I, D, LinearKind::kExpert);
        linear(re + "w2", he + "down_proj", D, I, LinearKind::kExpert);
      }
      return;
    }
    // gate_up_proj[e] = cat(w1, w3) along the output dim; down_proj[e] = w2.
    const size_t mat = static_cast<size_t>(I * D) * 2;  // bytes of one BF16 [I, D] or [D, I]
    std::vector<uint8_t> gate_up, down;
    for (int64_t e = 0; e < E; ++e) {
      for (std::vector<uint8_t>* dst : {&gate_up, &gate_up, &down}) {
        const std::vector<uint8_t> w = random_bytes(DType::kBF16, {static_cast<int64_t>(mat / 2)});
        dst->insert(dst->end(), w.begin(), w.end());
      }
    }
    push(h + "experts.gate_up_proj", DType::kBF16, {E, 2 * I, D}, std::move(gate_up));
    push(h + "experts.down_proj", DType::kBF16, {E, D, I}, std::move(down));
  }

  void moe(const std::string& r, const std::string& h, md::MoeKind kind) {
    const int64_t D = cfg_.hidden_size, E = cfg_.n_routed_experts, I = cfg_.moe_intermediate_size;
    linear(r + "gate", h + "gate", E, D, LinearKind::kDense);
    if (kind == md::MoeKind::kHash) {
      tid2eid(r + "gate.tid2eid", h + "gate.tid2eid");
    } else {
      floats(r + "gate.bias", h + "gate.e_score_correction_bias", DType::kF32, {E});
    }
    experts(r, h);
    linear(r + "shared_experts.w1", h + "shared_experts.gate_proj", I, D, LinearKind::kFp8);
    linear(r + "shared_experts.w3", h + "shared_experts.up_proj", I, D, LinearKind::kFp8);
    linear(r + "shared_experts.w2", h + "shared_experts.down_proj", D, I, LinearKind::kFp8);
  }

  void layer(const std::string& r, const std::string& h, md::AttentionKind attn, md::MoeKind moe_kind) {
    const int64_t D = cfg_.hidden_size, mix = cfg_.hc_mix_size();
    floats(r + "attn_norm.weight", h + "input_layernorm.weight", DType::kBF16, {D});
    floats(r + "ffn_norm.weight", h + "post_attention_layernorm.weight", DType::kBF16, {D});
    for (const auto& [rn, hn] : {std::pair{"hc_attn", "attn_hc."}, std::pair{"hc_ffn", "ffn_hc."}}) {
      floats(r + rn + "_fn", h + hn + "fn", DType::kF32, {mix, cfg_.hc_dim()});
      floats(r + rn + "_base", h + hn + "base", DType::kF32, {mix});
      floats(r + rn + "_scale", h + hn + "scale", DType::kF32, {3});
    }
    attention(r + "attn.", h + "self_attn.", attn);
    moe(r + "ffn.", h + "mlp.", moe_kind);
  }

  // transformers does not build MTP and never renames `mtp.*`: both namings use release names.
  void mtp() {
    const TinyNaming saved = opts_.naming;
    opts_.naming = TinyNaming::kRelease;
    const int64_t D = cfg_.hidden_size;
    const std::string p = "mtp.0.";
    linear(p + "e_proj", "", D, D, LinearKind::kFp8);
    linear(p + "h_proj", "", D, D, LinearKind::kFp8);
    floats(p + "enorm.weight", "", DType::kBF16, {D});
    floats(p + "hnorm.weight", "", DType::kBF16, {D});
    floats(p + "norm.weight", "", DType::kBF16, {D});
    floats(p + "hc_head_fn", "", DType::kF32, {cfg_.hc_mult, cfg_.hc_dim()});
    floats(p + "hc_head_base", "", DType::kF32, {cfg_.hc_mult});
    floats(p + "hc_head_scale", "", DType::kF32, {1});
    layer(p, "", cfg_.mtp_layer_type, md::MoeKind::kRouted);
    opts_.naming = saved;
  }

  const md::ModelConfig& cfg_;
  TinyCheckpointOptions opts_;
  std::mt19937 rng_;
  std::vector<TinyTensor> out_;
};

}  // namespace

md::ModelConfig tiny_model_config() {
  md::ModelConfig c;
  c.source = "tiny_model_config()";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.q_lora_rank = 24;
  c.o_groups = 2;
  c.o_lora_rank = 8;
  c.sliding_window = 8;
  c.layer_types = {md::AttentionKind::kSliding, md::AttentionKind::kCompressedSparse,
                   md::AttentionKind::kHeavilyCompressed, md::AttentionKind::kCompressedSparse};
  c.compress_rate_csa = 4;
  c.compress_rate_hca = 8;
  c.mtp_layer_type = md::AttentionKind::kSliding;
  c.rope_theta = 10000.0;
  c.compress_rope_theta = 160000.0;
  c.max_position_embeddings = 4096;
  c.index_n_heads = 2;
  c.index_head_dim = 8;
  c.index_topk = 4;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 32;
  c.mlp_layer_types = {md::MoeKind::kHash, md::MoeKind::kHash, md::MoeKind::kRouted, md::MoeKind::kRouted};
  c.routed_scaling_factor = 1.5;
  c.swiglu_limit = 10.0;
  c.hc_mult = 4;
  c.num_nextn_predict_layers = 1;
  c.torch_dtype = "bfloat16";
  return c;
}

md::ModelConfig tiny_nvfp4_attention_config() {
  md::ModelConfig c = tiny_model_config();
  c.q_lora_rank = 32;
  return c;
}

std::string tiny_config_json(const md::ModelConfig& c, TinyQuant quant) {
  nlohmann::json j;
  j["architectures"] = {"DeepseekV4ForCausalLM"};
  j["model_type"] = "deepseek_v4";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = 1;
  j["head_dim"] = c.head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["q_lora_rank"] = c.q_lora_rank;
  j["o_groups"] = c.o_groups;
  j["o_lora_rank"] = c.o_lora_rank;
  j["sliding_window"] = c.sliding_window;
  nlohmann::json layer_types = nlohmann::json::array(), mlp_types = nlohmann::json::array();
  for (md::AttentionKind k : c.layer_types) layer_types.push_back(layer_type_json(k));
  for (md::MoeKind k : c.mlp_layer_types) mlp_types.push_back(k == md::MoeKind::kHash ? "hash_moe" : "moe");
  j["layer_types"] = layer_types;
  j["mlp_layer_types"] = mlp_types;
  j["compress_rates"] = {{"compressed_sparse_attention", c.compress_rate_csa},
                         {"heavily_compressed_attention", c.compress_rate_hca}};
  j["rope_theta"] = c.rope_theta;
  j["compress_rope_theta"] = c.compress_rope_theta;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["index_n_heads"] = c.index_n_heads;
  j["index_head_dim"] = c.index_head_dim;
  j["index_topk"] = c.index_topk;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["scoring_func"] = c.scoring_func;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["swiglu_limit"] = c.swiglu_limit;
  j["hc_mult"] = c.hc_mult;
  j["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  j["hc_eps"] = c.hc_eps;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["torch_dtype"] = c.torch_dtype;
  if (quant != TinyQuant::kDense) {
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"scale_fmt", "ue8m0"},
                                {"weight_block_size", {128, 128}}};
    if (quant == TinyQuant::kFp8Mxfp4) j["expert_dtype"] = "fp4";
    if (quant != TinyQuant::kFp8Mxfp4) j["quantization_config"]["moe_quant_algo"] = "NVFP4";
  }
  return j.dump(2);
}

std::vector<TinyTensor> tiny_tensors(const md::ModelConfig& cfg, const TinyCheckpointOptions& opts) {
  Generator g(cfg, opts);
  g.all();
  return g.take();
}

std::string tiny_hf_quant_config_json(const std::vector<TinyTensor>& tensors, TinyQuant quant) {
  if (quant != TinyQuant::kModelOptMixed && quant != TinyQuant::kSeed && quant != TinyQuant::kW4A16) return "";
  const std::string nvfp4 = quant == TinyQuant::kW4A16 ? "W4A16_NVFP4" : "NVFP4";
  nlohmann::json layers = nlohmann::json::object();
  auto module_of = [](const std::string& name, const std::string& suffix) {
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0
               ? name.substr(0, name.size() - suffix.size())
               : std::string();
  };
  for (const TinyTensor& t : tensors) {
    if (std::string m = module_of(t.name, ".weight_scale_2"); !m.empty()) {
      layers[m] = {{"quant_algo", nvfp4}, {"group_size", 16}};
    } else if (std::string m2 = module_of(t.name, ".weight_scale"); !m2.empty() && t.dtype == DType::kF32) {
      layers[m2] = {{"quant_algo", "FP8_PB_WO"}};
    } else if (std::string m3 = module_of(t.name, ".weight_scale_inv"); !m3.empty() && t.dtype == DType::kF32) {
      layers[m3] = {{"quant_algo", "FP8_PB_WO"}};
    }
  }
  nlohmann::json q = {{"kv_cache_quant_algo", nullptr}, {"group_size", 16}};
  q["exclude_modules"] = quant == TinyQuant::kModelOptMixed
                             ? nlohmann::json{"*.attn.*", "*.attn_norm.*", "*.ffn.shared_experts.*", "*.ffn.gate.*",
                                              "*.ffn_norm.*", "embed.weight", "head.weight", "*.hc_*", "norm.weight"}
                             : nlohmann::json{"*.attn.indexer.*", "*.attn.compressor.*", "*.ffn.shared_experts.*",
                                              "*.ffn.gate.*", "embed.weight", "head.weight", "*.hc_*"};
  if (quant == TinyQuant::kW4A16) {
    q["quant_algo"] = nvfp4;
  } else {
    q["quant_algo"] = "MIXED_PRECISION";
    q["quantized_layers"] = layers;
  }
  nlohmann::json j = {{"producer", {{"name", "modelopt"}, {"version", "0.37.0"}}}, {"quantization", q}};
  return j.dump(2);
}

void write_tiny_tensors(const std::filesystem::path& file, const std::vector<TinyTensor>& tensors) {
  std::vector<io::TensorToWrite> w;
  for (const TinyTensor& t : tensors) w.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  io::write_safetensors(file, w);
}

void write_tiny_checkpoint(const std::filesystem::path& dir, const md::ModelConfig& cfg,
                           const TinyCheckpointOptions& opts) {
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir / "config.json");
    f << tiny_config_json(cfg, opts.quant);
    if (!f) throw Error(str_cat((dir / "config.json").string(), ": cannot write"));
  }
  const std::vector<TinyTensor> tensors = tiny_tensors(cfg, opts);
  if (const std::string hf = tiny_hf_quant_config_json(tensors, opts.quant); !hf.empty()) {
    std::ofstream f(dir / "hf_quant_config.json");
    f << hf;
    if (!f) throw Error(str_cat((dir / "hf_quant_config.json").string(), ": cannot write"));
  }
  write_tiny_tensors(dir / "model.safetensors", tensors);
}

}  // namespace clawmine::test
