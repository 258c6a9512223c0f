// The release <-> transformers name table and its lookup. Rules match whole dot-separated
// components of a release name; `*` matches one component (an expert index) and is copied
// into the transformers name. The longest matching rule wins; the unmatched tail
// (`weight`, `scale`, ...) is appended unchanged. Several rules with the same release side
// are alternatives, tried in table order.
#include "model/deepseek_v4/name_map.h"

#include <algorithm>
#include <span>
#include <string_view>

#include "core/error.h"

namespace clawmine::model::deepseek_v4 {

namespace {

struct NameRule {
  std::string_view release;
  std::string_view transformers;
};

// Whole names of the tensors outside the decoder layers.
constexpr NameRule kGlobalNames[] = {
    {"embed.weight", "model.embed_tokens.weight"},
    {"head.weight", "lm_head.weight"},
    {"norm.weight", "model.norm.weight"},
    {"hc_head_fn", "model.hc_head.hc_fn"},
    {"hc_head_base", "model.hc_head.hc_base"},
    {"hc_head_scale", "model.hc_head.hc_scale"},
};

// Inside a decoder layer: release `layers.N.<rule>` <-> transformers `model.layers.N.<rule>`.
constexpr NameRule kLayerNames[] = {
    {"attn_norm", "input_layernorm"},
    {"ffn_norm", "post_attention_layernorm"},
    {"hc_attn_fn", "attn_hc.fn"},
    {"hc_attn_base", "attn_hc.base"},
    {"hc_attn_scale", "attn_hc.scale"},
    {"hc_ffn_fn", "ffn_hc.fn"},
    {"hc_ffn_base", "ffn_hc.base"},
    {"hc_ffn_scale", "ffn_hc.scale"},
    {"attn.wq_a", "self_attn.q_a_proj"},
    {"attn.q_norm", "self_attn.q_a_norm"},
    {"attn.wq_b", "self_attn.q_b_proj"},
    {"attn.wkv", "self_attn.kv_proj"},
    {"attn.kv_norm", "self_attn.kv_norm"},
    {"attn.wo_a", "self_attn.o_a_proj"},
    {"attn.wo_b", "self_attn.o_b_proj"},
    {"attn.attn_sink", "self_attn.sinks"},
    {"attn.compressor.wkv", "self_attn.compressor.kv_proj"},
    {"attn.compressor.wgate", "self_attn.compressor.gate_proj"},
    {"attn.compressor.ape", "self_attn.compressor.position_bias"},
    {"attn.compressor.norm", "self_attn.compressor.kv_norm"},
    {"attn.indexer.wq_b", "self_attn.compressor.indexer.q_b_proj"},
    {"attn.indexer.weights_proj", "self_attn.compressor.indexer.scorer.weights_proj"},
    {"attn.indexer.weights_proj", "self_attn.compressor.indexer.weights_proj"},
    {"attn.indexer.compressor.wkv", "self_attn.compressor.indexer.kv_proj"},
    {"attn.indexer.compressor.wgate", "self_attn.compressor.indexer.gate_proj"},
    {"attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"},
    {"attn.indexer.compressor.norm", "self_attn.compressor.indexer.kv_norm"},
    {"ffn.gate", "mlp.gate"},
    {"ffn.gate.bias", "mlp.gate.e_score_correction_bias"},
    {"ffn.shared_experts.w1", "mlp.shared_experts.gate_proj"},
    {"ffn.shared_experts.w3", "mlp.shared_experts.up_proj"},
    {"ffn.shared_experts.w2", "mlp.shared_experts.down_proj"},
    {"ffn.experts.*.w1", "mlp.experts.*.gate_proj"},
    {"ffn.experts.*.w3", "mlp.experts.*.up_proj"},
    {"ffn.experts.*.w2", "mlp.experts.*.down_proj"},
};

// transformers 5.17 save_pretrained runs its conversion mapping in reverse and writes release
// names under `model.` with these exceptions (seen in tests/fixtures/models/tiny-a-hf).
constexpr NameRule kSavedGlobalNames[] = {
    {"embed.weight", "model.embed_tokens.weight"},
    {"head.weight", "head.weight"},
    {"norm.weight", "model.norm.weight"},
    {"hc_head_fn", "model.hc_head.hc_fn"},
    {"hc_head_base", "model.hc_head.hc_base"},
    {"hc_head_scale", "model.hc_head.hc_scale"},
};
constexpr NameRule kSavedLayerNames[] = {
    {"attn.kv_norm", "attn.norm"},
};

struct SchemeTables {
  std::span<const NameRule> global;
  std::span<const NameRule> layer;
};

constexpr std::string_view kReleaseLayerPrefix = "layers.";
constexpr std::string_view kTransformersLayerPrefix = "model.layers.";
constexpr std::string_view kMtpPrefix = "mtp.";
// Block-scale suffixes: the release writes `.scale`, transformers' FP8 `.weight_scale_inv`.
constexpr std::string_view kScaleSuffix = "scale";
constexpr std::string_view kScaleSuffixAlt = "weight_scale_inv";
constexpr std::string_view kFusedGateUp = "mlp.experts.gate_up_proj";
constexpr std::string_view kFusedDown = "mlp.experts.down_proj";

std::vector<std::string_view> split_dots(std::string_view s) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = s.find('.', start);
    parts.push_back(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) return parts;
    start = dot + 1;
  }
}

std::string join_dots(const std::vector<std::string_view>& parts, size_t begin = 0) {
  std::string s;
  for (size_t i = begin; i < parts.size(); ++i) {
    if (i > begin) s += '.';
    s += parts[i];
  }
  return s;
}

// Number of components of `rule` that match the start of `name` (0 when it does not match).
size_t match_length(const std::vector<std::string_view>& name, std::string_view rule,
                    std::vector<std::string_view>* wildcards) {
  const auto parts = split_dots(rule);
  if (parts.size() > name.size()) return 0;
  std::vector<std::string_view> captured;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "*") {
      captured.push_back(name[i]);
    } else if (parts[i] != name[i]) {
      return 0;
    }
  }
  if (wildcards) *wildcards = std::move(captured);
  return parts.size();
}

// Maps a name relative to a layer (`attn.wq_a.weight`) to its alternatives under `rules`.
std::vector<std::string> map_layer_name(std::string_view rel, std::span<const NameRule> rules) {
  const auto name = split_dots(rel);
  size_t best = 0;
  for (const NameRule& rule : rules) best = std::max(best, match_length(name, rule.release, nullptr));
  if (best == 0) return {std::string(rel)};
  std::vector<std::string> out;
  for (const NameRule& rule : rules) {
    std::vector<std::string_view> wildcards;
    if (match_length(name, rule.release, &wildcards) != best) continue;
    std::vector<std::string_view> mapped;
    size_t w = 0;
    for (std::string_view part : split_dots(rule.transformers)) mapped.push_back(part == "*" ? wildcards.at(w++) : part);
    for (size_t i = best; i < name.size(); ++i) mapped.push_back(name[i]);
    out.push_back(join_dots(mapped));
  }
  return out;
}

std::vector<std::string> transformers_names(const std::string& release_name, const SchemeTables& tables) {
  for (const NameRule& rule : tables.global) {
    if (release_name == rule.release) return {std::string(rule.transformers)};
  }
  if (release_name.rfind(kReleaseLayerPrefix, 0) == 0) {
    const size_t dot = release_name.find('.', kReleaseLayerPrefix.size());
    if (dot != std::string::npos) {
      const std::string layer = release_name.substr(kReleaseLayerPrefix.size(), dot - kReleaseLayerPrefix.size());
      std::vector<std::string> out;
      for (const std::string& rel : map_layer_name(std::string_view(release_name).substr(dot + 1), tables.layer)) {
        out.push_back(str_cat(kTransformersLayerPrefix, layer, ".", rel));
      }
      return out;
    }
  }
  return {release_name};
}

// `X.scale` -> also `X.weight_scale_inv`; the scheme's own spelling first.
std::vector<std::string> with_scale_aliases(const std::vector<std::string>& names, NamingScheme scheme) {
  std::vector<std::string> out;
  for (const std::string& n : names) {
    const auto parts = split_dots(n);
    if (parts.size() < 2 || parts.back() != kScaleSuffix) {
      out.push_back(n);
      continue;
    }
    const std::string alt = str_cat(join_dots({parts.begin(), parts.end() - 1}), ".", kScaleSuffixAlt);
    if (scheme != NamingScheme::kRelease) {
      out.push_back(alt);
      out.push_back(n);
    } else {
      out.push_back(n);
      out.push_back(alt);
    }
  }
  return out;
}

bool has_prefix(const std::vector<std::string>& names, std::string_view prefix) {
  for (const std::string& n : names) {
    if (n.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

}  // namespace

const char* naming_scheme_name(NamingScheme s) {
  switch (s) {
    case NamingScheme::kRelease: return "release";
    case NamingScheme::kTransformers: return "transformers";
    case NamingScheme::kTransformersSaved: return "transformers-saved";
  }
  return "?";
}

NamingScheme detect_naming_scheme(const io::Checkpoint& ckpt) {
  if (ckpt.find("embed.weight")) return NamingScheme::kRelease;
  const auto names = ckpt.names();
  // Under `model.layers.N.`, module names say self_attn / mlp, saved names attn / ffn.
  for (const std::string& n : names) {
    if (n.rfind(kTransformersLayerPrefix, 0) != 0) continue;
    if (n.find(".self_attn.") != std::string::npos || n.find(".mlp.") != std::string::npos) {
      return NamingScheme::kTransformers;
    }
    if (n.find(".attn.") != std::string::npos || n.find(".ffn.") != std::string::npos) {
      return NamingScheme::kTransformersSaved;
    }
  }
  if (ckpt.find("model.embed_tokens.weight")) return NamingScheme::kTransformers;
  if (has_prefix(names, kReleaseLayerPrefix)) return NamingScheme::kRelease;
  throw Error(str_cat("checkpoint ", ckpt.dir().string(), ": cannot tell the naming scheme (no ",
                      "embed.weight, model.embed_tokens.weight, layers.* or model.layers.* tensor among ",
                      names.size(), " tensors)"));
}

std::vector<std::string> checkpoint_names(NamingScheme scheme, const std::string& release_name) {
  if (scheme == NamingScheme::kRelease || release_name.rfind(kMtpPrefix, 0) == 0) {
    return with_scale_aliases({release_name}, scheme);
  }
  const SchemeTables tables = scheme == NamingScheme::kTransformers ? SchemeTables{kGlobalNames, kLayerNames}
                                                                    : SchemeTables{kSavedGlobalNames, kSavedLayerNames};
  return with_scale_aliases(transformers_names(release_name, tables), scheme);
}

FusedExpertNames fused_expert_names(int layer) {
  const std::string prefix = str_cat(kTransformersLayerPrefix, layer, ".");
  return {str_cat(prefix, kFusedGateUp), str_cat(prefix, kFusedDown)};
}

}  // namespace clawmine::model::deepseek_v4
