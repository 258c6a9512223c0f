// config.json -> ModelConfig. Accepts the release spelling (compress_ratios, num_hash_layers,
// qk_rope_head_dim, flat rope_scaling) and transformers' (layer_types, compress_rates,
// mlp_layer_types, rope_parameters, partial_rotary_factor), and resolves absent fields the way
// transformers' DeepseekV4Config.__post_init__ does (shared/specs/transformers-parity.md §2).
// Contradictions between the two spellings are errors rather than silently resolved. Every
// error names the file and the field.
#include "model/deepseek_v4/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "model/deepseek_v4/json_fields.h"
#include "model/deepseek_v4/quant_config.h"

namespace clawmine::model::deepseek_v4 {

namespace {

constexpr const char* kLogTag = "config";
constexpr const char* kSlidingName = "sliding_attention";
constexpr const char* kCsaName = "compressed_sparse_attention";
constexpr const char* kHcaName = "heavily_compressed_attention";
constexpr int64_t kReleaseCsaRatio = 4;  // release code: overlap + indexer iff ratio == 4
constexpr int64_t kDefaultHcaRate = 128;
constexpr int64_t kDefaultNumHashLayers = 3;                  // transformers' default_num_hash_layers
constexpr double kDefaultPartialRotaryFactor = 64.0 / 512.0;  // transformers' class default
constexpr int64_t kDefaultMaxPositions = 1048576;

// ---------------------------------------------------------------------------------------------
// Scalar fields

int64_t positive(const JsonFields& f, const std::string& key, int64_t v) {
  if (v <= 0) f.fail(key, str_cat("must be positive, got ", v));
  return v;
}

double positive(const JsonFields& f, const std::string& key, double v) {
  if (!(v > 0) || !std::isfinite(v)) f.fail(key, str_cat("must be a positive finite number, got ", v));
  return v;
}

// transformers' attribute_map lets `num_local_experts` / `intermediate_size` stand in for the
// V4 names; both present must agree.
std::optional<int64_t> int_or_alias(const JsonFields& f, const std::string& key, const std::string& alias) {
  std::optional<int64_t> v = f.opt_int(key);
  std::optional<int64_t> a = f.opt_int(alias);
  if (v && a && *v != *a) f.fail(alias, str_cat("is ", *a, " but '", key, "' is ", *v));
  return v ? v : a;
}

int64_t req_positive(const JsonFields& f, const std::string& key, const std::string& alias = "") {
  std::optional<int64_t> v = alias.empty() ? f.opt_int(key) : int_or_alias(f, key, alias);
  if (!v) f.fail_missing(key);
  return positive(f, key, *v);
}

int64_t opt_positive(const JsonFields& f, const std::string& key, int64_t fallback) {
  std::optional<int64_t> v = f.opt_int(key);
  return v ? positive(f, key, *v) : fallback;
}

double opt_positive(const JsonFields& f, const std::string& key, double fallback) {
  std::optional<double> v = f.opt_number(key);
  return v ? positive(f, key, *v) : fallback;
}

// bos/eos ids: an integer, a list (first entry is taken) or null (-1, "none").
int64_t token_id(const JsonFields& f, const std::string& key, int64_t fallback) {
  const nlohmann::json* v = f.get(key);
  if (!v) return f.json().contains(key) ? -1 : fallback;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_array() && !v->empty() && (*v)[0].is_number_integer()) return (*v)[0].get<int64_t>();
  f.fail_type(key, *v, "an integer or a list of integers");
}

void read_sizes(const JsonFields& f, ModelConfig& c) {
  c.vocab_size = req_positive(f, "vocab_size");
  c.hidden_size = req_positive(f, "hidden_size");
  c.num_hidden_layers = req_positive(f, "num_hidden_layers");
  c.num_attention_heads = req_positive(f, "num_attention_heads");
  c.head_dim = req_positive(f, "head_dim");
  c.q_lora_rank = req_positive(f, "q_lora_rank");
  c.o_groups = req_positive(f, "o_groups");
  c.o_lora_rank = req_positive(f, "o_lora_rank");
  c.sliding_window = req_positive(f, "sliding_window");
  c.index_n_heads = req_positive(f, "index_n_heads");
  c.index_head_dim = req_positive(f, "index_head_dim");
  c.index_topk = req_positive(f, "index_topk");
  c.n_routed_experts = req_positive(f, "n_routed_experts", "num_local_experts");
  c.num_experts_per_tok = req_positive(f, "num_experts_per_tok");
  c.moe_intermediate_size = req_positive(f, "moe_intermediate_size", "intermediate_size");
  c.max_position_embeddings = opt_positive(f, "max_position_embeddings", kDefaultMaxPositions);
}

void read_moe_and_misc(const JsonFields& f, ModelConfig& c) {
  // transformers ignores n_shared_experts and always builds one shared expert.
  c.n_shared_experts = f.opt_int("n_shared_experts").value_or(1);
  if (c.n_shared_experts != 1) {
    f.fail("n_shared_experts", str_cat("is ", c.n_shared_experts,
                                       "; DeepSeek V4 has exactly one shared expert (of width moe_intermediate_size)"));
  }
  c.scoring_func = f.opt_string("scoring_func").value_or("sqrtsoftplus");
  if (c.scoring_func != "sqrtsoftplus") {
    f.fail("scoring_func", str_cat("must be \"sqrtsoftplus\", got \"", c.scoring_func, "\""));
  }
  std::string act = f.opt_string("hidden_act").value_or("silu");
  if (act != "silu") f.fail("hidden_act", str_cat("must be \"silu\", got \"", act, "\""));
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (f.opt_bool(key).value_or(false)) f.fail(key, "is true; DeepSeek V4 checkpoints have no such biases");
  }
  c.routed_scaling_factor = opt_positive(f, "routed_scaling_factor", 1.5);
  if (std::optional<double> limit = f.opt_number("swiglu_limit")) {
    if (!(*limit > 0)) {
      f.fail("swiglu_limit", str_cat("must be positive, got ", *limit,
                                     " (the release code reads 0 as \"no clamp\" but transformers clamps to 0,"
                                     " zeroing every expert; the two disagree, so it is rejected)"));
    }
    c.swiglu_limit = *limit;
  } else {
    c.swiglu_limit = 10.0;
  }
  c.hc_mult = opt_positive(f, "hc_mult", int64_t{4});
  c.hc_sinkhorn_iters = opt_positive(f, "hc_sinkhorn_iters", int64_t{20});
  c.hc_eps = opt_positive(f, "hc_eps", 1e-6);
  c.rms_norm_eps = opt_positive(f, "rms_norm_eps", 1e-6);
  c.num_nextn_predict_layers = f.opt_int("num_nextn_predict_layers").value_or(1);
  if (c.num_nextn_predict_layers < 0) {
    f.fail("num_nextn_predict_layers", str_cat("must not be negative, got ", c.num_nextn_predict_layers));
  }
  c.tie_word_embeddings = f.opt_bool("tie_word_embeddings").value_or(false);
  c.bos_token_id = token_id(f, "bos_token_id", 0);
  c.eos_token_id = token_id(f, "eos_token_id", 1);
  c.torch_dtype = f.opt_string("torch_dtype").value_or(f.opt_string("dtype").value_or(""));
}

// ---------------------------------------------------------------------------------------------
// Attention layer schedule

struct CompressRates {
  int64_t csa = kReleaseCsaRatio;
  int64_t hca = kDefaultHcaRate;
  bool given = false;  // compress_rates or compress_rate_csa/hca present
};

CompressRates read_compress_rates(const JsonFields& f) {
  CompressRates r;
  if (std::optional<JsonFields> rates = f.opt_object("compress_rates")) {
    r.given = true;
    for (const auto& item : rates->json().items()) {
      const std::string& key = item.key();
      if (key == kCsaName) {
        r.csa = positive(*rates, key, rates->req_int(key));
      } else if (key == kHcaName) {
        r.hca = positive(*rates, key, rates->req_int(key));
      } else {
        rates->fail(key, str_cat("is not a compressed layer type (expected \"", kCsaName, "\" or \"", kHcaName, "\")"));
      }
    }
  }
  // Legacy scalars override compress_rates, as in transformers.
  if (std::optional<int64_t> csa = f.opt_int("compress_rate_csa")) {
    r.csa = positive(f, "compress_rate_csa", *csa);
    r.given = true;
  }
  if (std::optional<int64_t> hca = f.opt_int("compress_rate_hca")) {
    r.hca = positive(f, "compress_rate_hca", *hca);
    r.given = true;
  }
  return r;
}

// Release compress_ratios -> kinds. With explicit rates a value must equal one of them;
// without, the release rule applies (4 = CSA, any other positive value = HCA at that rate,
// one HCA rate per model) and `rates.hca` takes the HCA value.
std::vector<AttentionKind> kinds_from_ratios(const JsonFields& f, const std::vector<int64_t>& ratios,
                                             bool strict, CompressRates& rates) {
  if (strict && rates.csa == rates.hca) {
    f.fail("compress_ratios", str_cat("cannot be mapped: the CSA and HCA rates are both ", rates.csa));
  }
  std::vector<AttentionKind> kinds;
  std::optional<int64_t> hca_seen;
  for (size_t i = 0; i < ratios.size(); ++i) {
    const std::string key = str_cat("compress_ratios[", i, "]");
    const int64_t v = ratios[i];
    if (v < 0) f.fail(key, str_cat("must not be negative, got ", v));
    if (v == 0) {
      kinds.push_back(AttentionKind::kSliding);
    } else if (strict) {
      if (v == rates.csa) {
        kinds.push_back(AttentionKind::kCompressedSparse);
      } else if (v == rates.hca) {
        kinds.push_back(AttentionKind::kHeavilyCompressed);
      } else {
        f.fail(key, str_cat("is ", v, ", which is neither the CSA rate ", rates.csa, " nor the HCA rate ", rates.hca,
                            " (from compress_rates / compress_rate_csa / compress_rate_hca or their defaults)"));
      }
    } else if (v == kReleaseCsaRatio) {
      kinds.push_back(AttentionKind::kCompressedSparse);
    } else {
      if (hca_seen && *hca_seen != v) {
        f.fail(key, str_cat("is ", v, " but an earlier layer has HCA rate ", *hca_seen, "; one HCA rate per model"));
      }
      hca_seen = v;
      kinds.push_back(AttentionKind::kHeavilyCompressed);
    }
  }
  if (!strict && hca_seen) rates.hca = *hca_seen;
  return kinds;
}

std::vector<AttentionKind> kinds_from_names(const JsonFields& f, const std::vector<std::string>& names) {
  std::vector<AttentionKind> kinds;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == kSlidingName) {
      kinds.push_back(AttentionKind::kSliding);
    } else if (names[i] == kCsaName) {
      kinds.push_back(AttentionKind::kCompressedSparse);
    } else if (names[i] == kHcaName) {
      kinds.push_back(AttentionKind::kHeavilyCompressed);
    } else {
      f.fail(str_cat("layer_types[", i, "]"), str_cat("is \"", names[i], "\"; expected \"", kSlidingName, "\", \"",
                                                     kCsaName, "\" or \"", kHcaName, "\""));
    }
  }
  return kinds;
}

void resolve_layer_types(const JsonFields& f, ModelConfig& c) {
  const size_t num_layers = static_cast<size_t>(c.num_hidden_layers);
  CompressRates rates = read_compress_rates(f);
  std::optional<std::vector<std::string>> names = f.opt_string_array("layer_types");
  std::optional<std::vector<int64_t>> ratios = f.opt_int_array("compress_ratios");
  if (!names && !ratios) {
    throw Error(str_cat(f.source(), ": missing required field 'layer_types' (or the release's 'compress_ratios')"));
  }
  if (ratios && ratios->size() != num_layers && ratios->size() != num_layers + 1) {
    f.fail("compress_ratios", str_cat("has ", ratios->size(), " entries; expected num_hidden_layers (", num_layers,
                                      ") or one more for the MTP layer"));
  }
  if (names) {
    if (names->size() != num_layers) {
      f.fail("layer_types", str_cat("has ", names->size(), " entries but num_hidden_layers is ", num_layers));
    }
    c.layer_types = kinds_from_names(f, *names);
    if (ratios) {  // transformers ignores compress_ratios here; we insist they agree
      std::vector<AttentionKind> from_ratios = kinds_from_ratios(f, *ratios, /*strict=*/true, rates);
      for (size_t i = 0; i < num_layers; ++i) {
        if (from_ratios[i] != c.layer_types[i]) {
          f.fail("compress_ratios", str_cat("disagrees with layer_types at layer ", i, ": ",
                                            attention_kind_name(from_ratios[i]), " vs ",
                                            attention_kind_name(c.layer_types[i])));
        }
      }
      if (from_ratios.size() > num_layers) c.mtp_layer_type = from_ratios[num_layers];
    }
  } else {
    std::vector<AttentionKind> kinds = kinds_from_ratios(f, *ratios, /*strict=*/rates.given, rates);
    if (kinds.size() > num_layers) c.mtp_layer_type = kinds[num_layers];
    kinds.resize(num_layers);
    c.layer_types = kinds;
  }
  c.compress_rate_csa = rates.csa;
  c.compress_rate_hca = rates.hca;
}

// ---------------------------------------------------------------------------------------------
// MoE layer schedule

void resolve_mlp_layer_types(const JsonFields& f, ModelConfig& c) {
  const int64_t num_layers = c.num_hidden_layers;
  std::optional<int64_t> num_hash = f.opt_int("num_hash_layers");
  if (num_hash && (*num_hash < 0 || *num_hash > num_layers)) {
    f.fail("num_hash_layers", str_cat("is ", *num_hash, "; must be in [0, num_hidden_layers = ", num_layers, "]"));
  }
  std::optional<std::vector<std::string>> names = f.opt_string_array("mlp_layer_types");
  c.mlp_layer_types.clear();
  if (!names) {
    // transformers: first num_hash_layers (default 3) are hash_moe, the rest moe.
    const int64_t n = num_hash ? *num_hash : std::min(kDefaultNumHashLayers, num_layers);
    for (int64_t i = 0; i < num_layers; ++i) c.mlp_layer_types.push_back(i < n ? MoeKind::kHash : MoeKind::kRouted);
    return;
  }
  if (static_cast<int64_t>(names->size()) != num_layers) {
    f.fail("mlp_layer_types", str_cat("has ", names->size(), " entries but num_hidden_layers is ", num_layers));
  }
  for (size_t i = 0; i < names->size(); ++i) {
    if ((*names)[i] == "hash_moe") {
      c.mlp_layer_types.push_back(MoeKind::kHash);
    } else if ((*names)[i] == "moe") {
      c.mlp_layer_types.push_back(MoeKind::kRouted);
    } else {
      f.fail(str_cat("mlp_layer_types[", i, "]"), str_cat("is \"", (*names)[i], "\"; expected \"hash_moe\" or \"moe\""));
    }
  }
  if (num_hash) {  // transformers ignores num_hash_layers here; we insist they agree
    for (int64_t i = 0; i < num_layers; ++i) {
      const bool hash = c.mlp_layer_types[static_cast<size_t>(i)] == MoeKind::kHash;
      if (hash != (i < *num_hash)) {
        f.fail("num_hash_layers", str_cat("is ", *num_hash, " but mlp_layer_types[", i, "] is ",
                                          hash ? "\"hash_moe\"" : "\"moe\""));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE

std::string rope_type_of(const JsonFields& d) {
  if (std::optional<std::string> t = d.opt_string("rope_type")) return *t;
  return d.opt_string("type").value_or("default");
}

// transformers' get_mscale: the YaRN attention factor derived when none is given.
double yarn_mscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

// YaRN of the compressed layers, from a flat rope dict or the nested "compress" one. For a
// flat dict transformers injects attention_factor = 1.0; for an already-nested one it derives
// the YaRN mscale, which the release model does not have, so anything but 1.0 is rejected.
void read_compress_rope(const JsonFields& d, bool nested, ModelConfig& c) {
  const std::string type = rope_type_of(d);
  const std::string type_key = d.has("rope_type") ? "rope_type" : "type";
  c.rope_scaling = RopeScaling{};
  if (type == "default") return;
  if (type != "yarn") d.fail(type_key, str_cat("must be \"yarn\" or \"default\", got \"", type, "\""));
  RopeScaling& y = c.rope_scaling;
  y.yarn = true;
  y.original_max_position_embeddings =
      d.opt_int("original_max_position_embeddings").value_or(c.max_position_embeddings);
  positive(d, "original_max_position_embeddings", y.original_max_position_embeddings);
  std::optional<double> factor = d.opt_number("factor");
  y.factor = factor ? *factor
                    : static_cast<double>(c.max_position_embeddings) / y.original_max_position_embeddings;
  if (!(y.factor > 0) || !std::isfinite(y.factor)) d.fail("factor", str_cat("must be positive, got ", y.factor));
  y.beta_fast = d.opt_number("beta_fast").value_or(32.0);
  y.beta_slow = d.opt_number("beta_slow").value_or(1.0);
  if (d.opt_bool("truncate").value_or(true) == false) {
    d.fail("truncate", "is false; DeepSeek V4's YaRN rounds the correction range (truncate = true)");
  }
  double attention_factor = 1.0;
  if (std::optional<double> af = d.opt_number("attention_factor")) {
    attention_factor = *af;
  } else if (nested) {
    std::optional<double> mscale = d.opt_number("mscale");
    std::optional<double> mscale_all = d.opt_number("mscale_all_dim");
    attention_factor = (mscale && mscale_all && *mscale != 0 && *mscale_all != 0)
                           ? yarn_mscale(y.factor, *mscale) / yarn_mscale(y.factor, *mscale_all)
                           : yarn_mscale(y.factor, 1.0);
  }
  if (attention_factor != 1.0) {
    d.fail("attention_factor", str_cat("resolves to ", attention_factor,
                                       "; DeepSeek V4 applies no YaRN attention scaling. transformers derives this "
                                       "value when a nested rope_parameters entry lacks attention_factor; set it to 1.0"));
  }
}

// R from the top-level fields, and (nested form) from the per-table partial_rotary_factor that
// transformers' rotary embedding actually uses (a missing one means 1.0: the whole head).
void resolve_rope_dim(const JsonFields& f, const std::optional<JsonFields>& main,
                      const std::optional<JsonFields>& compress, ModelConfig& c) {
  auto dim_from_factor = [&](const JsonFields& d, const std::string& key, double factor) {
    const double r = static_cast<double>(c.head_dim) * factor;
    if (!(factor > 0) || r != std::floor(r)) {
      d.fail(key, str_cat("is ", factor, "; head_dim (", c.head_dim, ") * factor must be a positive integer"));
    }
    return static_cast<int64_t>(r);
  };
  std::optional<int64_t> legacy = f.opt_int("qk_rope_head_dim");
  std::optional<double> factor = f.opt_number("partial_rotary_factor");
  std::optional<int64_t> top;
  if (factor) {
    top = dim_from_factor(f, "partial_rotary_factor", *factor);
    if (legacy && *legacy != *top) {
      f.fail("qk_rope_head_dim", str_cat("is ", *legacy, " but partial_rotary_factor gives ", *top));
    }
  } else if (legacy) {
    top = *legacy;
  }
  std::optional<int64_t> nested;
  if (main) {
    for (const JsonFields* d : {&*main, &*compress}) {
      const int64_t r = dim_from_factor(*d, "partial_rotary_factor", d->opt_number("partial_rotary_factor").value_or(1.0));
      if (nested && *nested != r) {
        d->fail("partial_rotary_factor", str_cat("gives ", r, " rotary dims but rope_parameters.main gives ", *nested));
      }
      nested = r;
    }
    if (top && *top != *nested) {
      compress->fail("partial_rotary_factor",
                     str_cat("gives ", *nested, " rotary dims (1.0, the whole head, when absent, as in transformers) "
                             "but the top-level qk_rope_head_dim/partial_rotary_factor gives ", *top));
    }
  }
  if (top) {
    c.qk_rope_head_dim = *top;
  } else if (nested) {
    c.qk_rope_head_dim = *nested;
  } else {
    c.qk_rope_head_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * kDefaultPartialRotaryFactor);
    log_warn(kLogTag, f.source(), ": neither qk_rope_head_dim nor partial_rotary_factor given; using transformers' "
             "default factor 0.125, qk_rope_head_dim = ", c.qk_rope_head_dim);
  }
}

void resolve_rope(const JsonFields& f, ModelConfig& c) {
  c.rope_theta = opt_positive(f, "rope_theta", 10000.0);
  c.compress_rope_theta = opt_positive(f, "compress_rope_theta", 160000.0);
  // transformers: `rope_scaling or rope_parameters` (a non-empty legacy dict wins).
  std::optional<JsonFields> scaling = f.opt_object("rope_scaling");
  std::optional<JsonFields> params = f.opt_object("rope_parameters");
  if (scaling && scaling->json().empty()) scaling.reset();
  if (scaling && params) {
    log_warn(kLogTag, f.source(), ": both rope_scaling and rope_parameters given; using rope_scaling as transformers does");
  }
  std::optional<JsonFields> rope = scaling ? scaling : params;
  std::optional<JsonFields> main, compress;
  if (rope && rope->has("main") && rope->has("compress") && rope->get("main")->is_object() &&
      rope->get("compress")->is_object()) {
    main = rope->opt_object("main");
    compress = rope->opt_object("compress");
    const std::string main_type = rope_type_of(*main);
    if (main_type != "default") {
      main->fail(main->has("rope_type") ? "rope_type" : "type",
                 str_cat("is \"", main_type, "\"; sliding layers use plain RoPE (\"default\") in DeepSeek V4"));
    }
    c.rope_theta = positive(*main, "rope_theta", main->opt_number("rope_theta").value_or(c.rope_theta));
    c.compress_rope_theta =
        positive(*compress, "rope_theta", compress->opt_number("rope_theta").value_or(c.compress_rope_theta));
    read_compress_rope(*compress, /*nested=*/true, c);
  } else if (rope) {
    // As in transformers, a flat dict's own rope_theta is ignored: main takes the top-level
    // rope_theta and compress takes compress_rope_theta.
    read_compress_rope(*rope, /*nested=*/false, c);
  } else {
    c.rope_scaling = RopeScaling{};
  }
  resolve_rope_dim(f, main, compress, c);
}

// ---------------------------------------------------------------------------------------------
// Cross-field checks

void validate(const JsonFields& f, const ModelConfig& c) {
  const std::string rope_key = f.has("partial_rotary_factor") ? "partial_rotary_factor" : "qk_rope_head_dim";
  if (c.qk_rope_head_dim <= 0 || c.qk_rope_head_dim % 2 != 0) {
    f.fail(rope_key, str_cat("gives qk_rope_head_dim = ", c.qk_rope_head_dim, "; it must be positive and even"));
  }
  if (c.qk_rope_head_dim > c.head_dim) {
    f.fail(rope_key, str_cat("gives qk_rope_head_dim = ", c.qk_rope_head_dim, ", more than head_dim = ", c.head_dim));
  }
  if (c.qk_rope_head_dim > c.index_head_dim) {
    f.fail(rope_key, str_cat("gives qk_rope_head_dim = ", c.qk_rope_head_dim, ", more than index_head_dim = ",
                             c.index_head_dim, " (the indexer rotates the same trailing dims)"));
  }
  if (c.num_attention_heads % c.o_groups != 0) {
    f.fail("o_groups", str_cat("is ", c.o_groups, " and does not divide num_attention_heads = ", c.num_attention_heads));
  }
  if (c.num_experts_per_tok > c.n_routed_experts) {
    f.fail("num_experts_per_tok", str_cat("is ", c.num_experts_per_tok, ", more than n_routed_experts = ",
                                          c.n_routed_experts));
  }
}

}  // namespace

const char* attention_kind_name(AttentionKind k) {
  switch (k) {
    case AttentionKind::kSliding: return "sliding";
    case AttentionKind::kCompressedSparse: return "csa";
    case AttentionKind::kHeavilyCompressed: return "hca";
  }
  return "?";
}

const char* moe_kind_name(MoeKind k) {
  switch (k) {
    case MoeKind::kHash: return "hash";
    case MoeKind::kRouted: return "routed";
  }
  return "?";
}

int64_t ModelConfig::compress_rate(int layer) const {
  CLAWMINE_CHECK(layer >= 0 && layer <= num_hidden_layers, source, ": layer ", layer, " out of range [0, ",
                 num_hidden_layers, "] (", num_hidden_layers, " is the MTP layer)");
  const AttentionKind kind =
      layer == num_hidden_layers ? mtp_layer_type : layer_types[static_cast<size_t>(layer)];
  switch (kind) {
    case AttentionKind::kSliding: return 0;
    case AttentionKind::kCompressedSparse: return compress_rate_csa;
    case AttentionKind::kHeavilyCompressed: return compress_rate_hca;
  }
  return 0;
}

int64_t ModelConfig::num_hash_layers() const {
  return std::count(mlp_layer_types.begin(), mlp_layer_types.end(), MoeKind::kHash);
}

ModelConfig parse_model_config(const std::string& config_json, const std::string& source,
                               const std::string& hf_quant_config_json) {
  nlohmann::json root = parse_json_object(config_json, source);
  JsonFields f(root, source);
  const std::optional<std::string> model_type = f.opt_string("model_type");
  if (!model_type) f.fail_missing("model_type");
  if (*model_type != "deepseek_v4") {
    f.fail("model_type", str_cat("is \"", *model_type, "\"; expected \"deepseek_v4\""));
  }
  ModelConfig c;
  c.source = source;
  read_sizes(f, c);
  read_moe_and_misc(f, c);
  resolve_layer_types(f, c);
  resolve_mlp_layer_types(f, c);
  resolve_rope(f, c);
  validate(f, c);
  read_quantization_config(f, c.quant);
  if (!hf_quant_config_json.empty()) {
    const std::string hf_source = (std::filesystem::path(source).parent_path() / "hf_quant_config.json").string();
    read_hf_quant_config(hf_quant_config_json, hf_source, c.quant);
  }
  return c;
}

namespace {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path.string(), ": cannot open file"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(str_cat(path.string(), ": read error"));
  return text.str();
}

}  // namespace

ModelConfig load_model_config(const std::filesystem::path& dir) {
  const std::filesystem::path config_path = dir / "config.json";
  if (!std::filesystem::is_regular_file(config_path)) {
    throw Error(str_cat(config_path.string(), ": config.json not found"));
  }
  const std::filesystem::path quant_path = dir / "hf_quant_config.json";
  std::string quant_text;
  if (std::filesystem::is_regular_file(quant_path)) {
    quant_text = read_text_file(quant_path);
    if (quant_text.empty()) throw Error(str_cat(quant_path.string(), ": file is empty"));
  }
  return parse_model_config(read_text_file(config_path), config_path.string(), quant_text);
}

}  // namespace clawmine::model::deepseek_v4
