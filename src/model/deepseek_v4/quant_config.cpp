// config.json `quantization_config` / `expert_dtype` and hf_quant_config.json -> QuantConfig.
// Only the description is checked here (types, known methods, consistent block sizes); whether
// the tensors match it is the weight binder's business.
#include "model/deepseek_v4/quant_config.h"

#include <optional>

#include "core/error.h"

namespace clawmine::model::deepseek_v4 {

namespace {

// The ModelOpt members shared by a config.json `quantization_config` of quant_method
// "modelopt" and by hf_quant_config.json's `quantization` object.
void read_modelopt_fields(const JsonFields& f, QuantConfig& q) {
  if (auto algo = f.opt_string("quant_algo")) q.modelopt_quant_algo = *algo;
  if (auto kv = f.opt_string("kv_cache_quant_algo")) q.kv_cache_quant_algo = *kv;
  if (auto gs = f.opt_int("group_size")) {
    if (*gs <= 0) f.fail("group_size", str_cat("must be positive, got ", *gs));
    q.modelopt_group_size = *gs;
  }
  // Newer exports spell the exclusion list `ignore`.
  for (const char* key : {"exclude_modules", "ignore"}) {
    if (auto list = f.opt_string_array(key)) q.exclude_modules = *list;
  }
  if (auto layers = f.opt_object("quantized_layers")) {
    q.quantized_layers.clear();
    for (const auto& [module, entry] : layers->json().items()) {
      if (!entry.is_object()) layers->fail_type(module, entry, "an object");
      JsonFields e(entry, f.source(), layers->path(module));
      std::string algo = e.req_string("quant_algo");
      if (auto gs = e.opt_int("group_size"); gs && *gs <= 0) {
        e.fail("group_size", str_cat("must be positive, got ", *gs));
      }
      q.quantized_layers.emplace_back(module, algo);
    }
  }
  if (q.modelopt_quant_algo == "MIXED_PRECISION" && q.quantized_layers.empty()) {
    f.fail("quantized_layers", "must list the quantized modules when quant_algo is \"MIXED_PRECISION\"");
  }
}

}  // namespace

void read_quantization_config(const JsonFields& root, QuantConfig& q) {
  if (auto expert = root.opt_string("expert_dtype")) q.expert_dtype = *expert;
  std::optional<JsonFields> qc = root.opt_object("quantization_config");
  if (!qc) return;
  q.quant_method = qc->req_string("quant_method");
  if (q.quant_method == "fp8") {
    q.fmt = qc->opt_string("fmt").value_or("e4m3");
    if (q.fmt != "e4m3") qc->fail("fmt", str_cat("must be \"e4m3\", got \"", q.fmt, "\""));
    q.activation_scheme = qc->opt_string("activation_scheme").value_or("dynamic");
    if (q.activation_scheme != "dynamic" && q.activation_scheme != "static") {
      qc->fail("activation_scheme", str_cat("must be \"dynamic\" or \"static\", got \"", q.activation_scheme, "\""));
    }
    q.scale_fmt = qc->opt_string("scale_fmt").value_or("");
    if (!q.scale_fmt.empty() && q.scale_fmt != "ue8m0") {
      qc->fail("scale_fmt", str_cat("must be \"ue8m0\" or absent, got \"", q.scale_fmt, "\""));
    }
    if (auto block = qc->opt_int_array("weight_block_size")) {
      if (block->size() != 2 || (*block)[0] <= 0 || (*block)[1] <= 0) {
        qc->fail("weight_block_size", "must be two positive integers [rows, cols]");
      }
      q.weight_block_size = *block;
    }
    // NVIDIA's DSV4 NVFP4 export keeps quant_method "fp8" and marks the experts here.
    if (auto moe = qc->opt_string("moe_quant_algo")) q.moe_quant_algo = *moe;
  } else if (q.quant_method == "modelopt") {
    read_modelopt_fields(*qc, q);
    if (auto inner = qc->opt_object("quantization")) read_modelopt_fields(*inner, q);
  } else {
    qc->fail("quant_method", str_cat("must be \"fp8\" or \"modelopt\", got \"", q.quant_method, "\""));
  }
}

void read_hf_quant_config(const std::string& text, const std::string& source, QuantConfig& q) {
  nlohmann::json root = parse_json_object(text, source);
  JsonFields f(root, source);
  f.opt_object("producer");  // informational; only its type is checked
  std::optional<JsonFields> quant = f.opt_object("quantization");
  if (!quant) f.fail_missing("quantization");
  if (!quant->json().contains("quant_algo")) quant->fail_missing("quant_algo");  // null is allowed
  QuantConfig modelopt = q;
  modelopt.modelopt_quant_algo.clear();
  modelopt.kv_cache_quant_algo.clear();
  modelopt.modelopt_group_size = 0;
  modelopt.exclude_modules.clear();
  modelopt.quantized_layers.clear();
  read_modelopt_fields(*quant, modelopt);
  if (modelopt.quant_method.empty()) modelopt.quant_method = "modelopt";
  q = modelopt;
}

}  // namespace clawmine::model::deepseek_v4
