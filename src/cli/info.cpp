// `clawmine info --model DIR [--json]`: what a checkpoint holds, from its config and its bound
// weights: sizes, the layer schedule, parameter counts, bytes by dtype, the storage format of
// each module family and whether an MTP block is present. Everything except the first line
// (the naming scheme) is computed from the bound weights in release terms, so one model reads
// the same in release and in transformers naming. With --backend cuda the model is also loaded
// and placed on the GPU, and the device, the load and placement times and the arena use follow.
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/deepseek_v4/binder.h"
#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/weight_walk.h"

#ifdef CLAWMINE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#endif

namespace clawmine::cli {

namespace {

namespace md = model::deepseek_v4;
using OrderedJson = nlohmann::ordered_json;

struct InfoOptions {
  ModelOptions model;  // --model and the backend flags (the quantized-path flags keep their defaults)
  bool json = false;
};

// `--backend cuda`: the model loaded and placed on the device, what it took and what it holds.
struct Placement {
  std::string backend, device, act_dtype;
  double load_seconds = 0, place_seconds = 0;
  size_t arena_bytes = 0, allocated = 0, scratch_bytes = 0;
};

Placement place_model(const ModelOptions& o) {
  Placement p;
  const LoadedModel m = o.load();
  p.backend = m.backend->name();
  p.act_dtype = std::string(dtype_name(m.backend->act_dtype()));
  p.load_seconds = m.load_seconds;
  p.place_seconds = m.place_seconds;
#ifdef CLAWMINE_HAVE_CUDA
  p.device = backend::cuda::device_summary(0);
  const backend::cuda::ArenaUsage u = backend::cuda::arena_usage(*m.backend);
  p.arena_bytes = u.arena_bytes;
  p.allocated = u.allocated;
  p.scratch_bytes = u.scratch_bytes;
#endif
  return p;
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1ull << 30));
  return buf;
}

std::string placement_text(const Placement& p) {
  std::string out = str_cat("backend: ", p.backend, " (", p.device, "), activations ", p.act_dtype, "\n");
  char times[96];
  std::snprintf(times, sizeof times, "load: %.2f s, placement on the device: %.2f s\n", p.load_seconds, p.place_seconds);
  out += times;
  out += str_cat("arena: ", gib(p.arena_bytes), " (weights and caches ", gib(p.allocated), ", scratch region ",
                 gib(p.scratch_bytes), ", free ", gib(p.arena_bytes - p.allocated - p.scratch_bytes), ")\n");
  return out;
}

std::string layer_schedule(const md::ModelConfig& c) {
  std::string s;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const md::AttentionKind kind = c.layer_types[static_cast<size_t>(i)];
    s += str_cat(i ? " " : "", i, ":", md::attention_kind_name(kind));
    if (kind != md::AttentionKind::kSliding) s += str_cat("(", c.compress_rate(i), ")");
    s += str_cat("/", md::moe_kind_name(c.mlp_layer_types[static_cast<size_t>(i)]));
  }
  return s;
}

// "fp8-block F8_E4M3 + F8_E8M0 scales", "dense BF16", ...
std::string describe_format(const md::LinearWeight& l) {
  std::string s = str_cat(md::weight_format_name(l.format), " ", dtype_name(l.weight.dtype));
  if (!l.scale.empty()) s += str_cat(" + ", dtype_name(l.scale.dtype), " scales");
  if (!l.weight_scale_2.empty()) s += str_cat(" + ", dtype_name(l.weight_scale_2.dtype), " global scale");
  if (!l.input_scale.empty()) s += " + input scale";
  return s;
}

std::string rope_line(const md::ModelConfig& c) {
  std::string s = str_cat("dim ", c.qk_rope_head_dim, ", sliding theta ", c.rope_theta, ", compressed theta ",
                          c.compress_rope_theta);
  const md::RopeScaling& y = c.rope_scaling;
  if (y.yarn) {
    s += str_cat(" with yarn (factor ", y.factor, ", original ", y.original_max_position_embeddings, ", beta ",
                 y.beta_fast, "/", y.beta_slow, ")");
  }
  return s;
}

struct Summary {
  std::string naming;
  OrderedJson config;  // sizes, HF field names
  std::string schedule;
  std::string rope;
  std::string mtp;
  int64_t params_total = 0;
  int64_t params_mtp = 0;
  std::map<int, int64_t> params_by_family;                     // WeightFamily -> count
  std::map<std::string, uint64_t> bytes_by_dtype;
  std::map<int, std::map<std::string, int64_t>> formats;       // WeightFamily -> format -> linears
  std::set<std::string> format_names;                          // "<format> <dtype>" over all linears
  size_t unused = 0;
};

Summary summarize(const md::ModelConfig& c, const md::BoundModel& bound) {
  Summary s;
  s.naming = md::naming_scheme_name(bound.naming);
  s.config = OrderedJson{
      {"model_type", "deepseek_v4"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"head_dim", c.head_dim},
      {"qk_rope_head_dim", c.qk_rope_head_dim},
      {"q_lora_rank", c.q_lora_rank},
      {"o_groups", c.o_groups},
      {"o_lora_rank", c.o_lora_rank},
      {"sliding_window", c.sliding_window},
      {"compress_rate_csa", c.compress_rate_csa},
      {"compress_rate_hca", c.compress_rate_hca},
      {"index_n_heads", c.index_n_heads},
      {"index_head_dim", c.index_head_dim},
      {"index_topk", c.index_topk},
      {"n_routed_experts", c.n_routed_experts},
      {"num_experts_per_tok", c.num_experts_per_tok},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"n_shared_experts", c.n_shared_experts},
      {"num_hash_layers", c.num_hash_layers()},
      {"hc_mult", c.hc_mult},
      {"hc_sinkhorn_iters", c.hc_sinkhorn_iters},
  };
  s.schedule = layer_schedule(c);
  s.rope = rope_line(c);
  if (bound.weights.mtp) {
    s.mtp = str_cat("present (", md::attention_kind_name(c.mtp_layer_type), "/routed block)");
  } else if (!bound.mtp_problem.empty()) {
    s.mtp = "incomplete, not bound";
  } else {
    s.mtp = "absent";
  }
  s.unused = bound.unused.size();

  auto count_tensor = [&](const TensorView& t) {
    if (!t.empty()) s.bytes_by_dtype[std::string(dtype_name(t.dtype))] += t.nbytes();
  };
  md::for_each_weight(bound.weights, [&](const md::WeightRef& r) {
    int64_t params = 0;
    if (r.linear) {
      const md::LinearWeight& l = *r.linear;
      params = l.out_features * l.in_features;
      for (const TensorView* t : {&l.weight, &l.scale, &l.weight_scale_2, &l.input_scale}) count_tensor(*t);
      const std::string fmt = describe_format(l);
      ++s.formats[static_cast<int>(r.family)][fmt];
      s.format_names.insert(str_cat(md::weight_format_name(l.format), " ", dtype_name(l.weight.dtype)));
    } else {
      count_tensor(*r.tensor);
      const DType t = r.tensor->dtype;
      if (t != DType::kI64 && t != DType::kI32) params = r.tensor->numel();  // tid2eid is a table
    }
    s.params_total += params;
    if (r.mtp) s.params_mtp += params;
    s.params_by_family[static_cast<int>(r.family)] += params;
  });
  return s;
}

std::string family_name(int f) { return md::weight_family_name(static_cast<md::WeightFamily>(f)); }

std::string joined_formats(const std::map<std::string, int64_t>& formats) {
  std::string s;
  for (const auto& [fmt, n] : formats) s += str_cat(s.empty() ? "" : ", ", fmt, " x", n);
  return s;
}

void print_text(const Summary& s, const Placement* placed) {
  const OrderedJson& c = s.config;
  auto v = [&](const char* key) { return c.at(key).get<int64_t>(); };
  std::string out;
  out += str_cat("naming: ", s.naming, "\n");
  out += str_cat("model_type: ", c.at("model_type").get<std::string>(), "\n");
  out += str_cat("model: vocab ", v("vocab_size"), ", hidden ", v("hidden_size"), ", layers ",
                 v("num_hidden_layers"), "\n");
  out += str_cat("attention: heads ", v("num_attention_heads"), ", head_dim ", v("head_dim"), ", rope_dim ",
                 v("qk_rope_head_dim"), ", q_lora ", v("q_lora_rank"), ", o_groups ", v("o_groups"), ", o_lora ",
                 v("o_lora_rank"), ", window ", v("sliding_window"), "\n");
  out += str_cat("compression: csa rate ", v("compress_rate_csa"), ", hca rate ", v("compress_rate_hca"),
                 "; indexer heads ", v("index_n_heads"), ", dim ", v("index_head_dim"), ", top-k ", v("index_topk"),
                 "\n");
  out += str_cat("moe: experts ", v("n_routed_experts"), ", top-k ", v("num_experts_per_tok"), ", width ",
                 v("moe_intermediate_size"), ", shared ", v("n_shared_experts"), ", hash layers ",
                 v("num_hash_layers"), "\n");
  out += str_cat("hyper-connections: hc_mult ", v("hc_mult"), ", sinkhorn iters ", v("hc_sinkhorn_iters"), "\n");
  out += str_cat("rope: ", s.rope, "\n");
  out += str_cat("layers: ", s.schedule, "\n");
  out += str_cat("mtp: ", s.mtp, "\n");
  out += str_cat("parameters: ", s.params_total, " (mtp ", s.params_mtp, ")\n");
  for (const auto& [f, n] : s.params_by_family) out += str_cat("  ", family_name(f), ": ", n, "\n");
  out += "bytes by dtype:";
  for (const auto& [t, n] : s.bytes_by_dtype) out += str_cat(" ", t, " ", n);
  out += "\n";
  std::string headline;
  for (const std::string& f : s.format_names) headline += (headline.empty() ? "" : " + ") + f;
  out += str_cat("quantization: ", headline, "\n");
  for (const auto& [f, formats] : s.formats) out += str_cat("  ", family_name(f), ": ", joined_formats(formats), "\n");
  if (s.unused) out += str_cat("unused tensors: ", s.unused, "\n");
  if (placed) out += placement_text(*placed);
  std::fputs(out.c_str(), stdout);
}

void print_json(const Summary& s, const Placement* placed) {
  OrderedJson j;
  j["naming"] = s.naming;
  j["config"] = s.config;
  j["rope"] = s.rope;
  j["layers"] = s.schedule;
  j["mtp"] = s.mtp;
  OrderedJson params{{"total", s.params_total}, {"mtp", s.params_mtp}};
  for (const auto& [f, n] : s.params_by_family) params["by_family"][family_name(f)] = n;
  j["parameters"] = params;
  j["bytes_by_dtype"] = OrderedJson(s.bytes_by_dtype);
  j["quantization"] = OrderedJson::object();
  for (const auto& [f, formats] : s.formats) j["quantization"][family_name(f)] = OrderedJson(formats);
  j["unused_tensors"] = s.unused;
  if (placed) {
    j["placement"] = OrderedJson{{"backend", placed->backend},
                                 {"device", placed->device},
                                 {"act_dtype", placed->act_dtype},
                                 {"load_seconds", placed->load_seconds},
                                 {"place_seconds", placed->place_seconds},
                                 {"arena_bytes", placed->arena_bytes},
                                 {"allocated_bytes", placed->allocated},
                                 {"scratch_bytes", placed->scratch_bytes}};
  }
  std::fputs((j.dump(2) + "\n").c_str(), stdout);
}

void run_info(const InfoOptions& opts) {
  opts.model.check_available();
  const std::string& dir = opts.model.model_dir;
  const md::ModelConfig cfg = md::load_model_config(dir);
  const io::Checkpoint ckpt = io::Checkpoint::open(dir);
  const md::BoundModel bound = md::bind_weights(ckpt, cfg);
  const Summary s = summarize(cfg, bound);
  std::optional<Placement> placed;
  if (opts.model.is_cuda()) placed = place_model(opts.model);
  if (opts.json) {
    print_json(s, placed ? &*placed : nullptr);
  } else {
    print_text(s, placed ? &*placed : nullptr);
  }
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto opts = std::make_shared<InfoOptions>();
  auto* cmd = app.add_subcommand("info", "Summarize a checkpoint: sizes, layer schedule, parameters, dtypes, formats");
  cmd->add_option("--model", opts->model.model_dir, "checkpoint directory (config.json + *.safetensors)")->required();
  cmd->add_flag("--json", opts->json, "print the summary as JSON");
  opts->model.add_backend_flags(*cmd);
  cmd->callback([opts] { run_info(*opts); });
}

}  // namespace clawmine::cli
