#include "cli/model_options.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "model/deepseek_v4/dequant.h"

#ifdef CLAWMINE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#endif

namespace clawmine::cli {

void BackendOptions::add_backend_flags(CLI::App& cmd, bool with_threads) {
  cmd.add_option("--backend", backend, "Compute backend: cpu (float32 reference) or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  if (with_threads) cmd.add_option("--threads", threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--act-dtype", act_dtype,
                 "Activations between ops: f32 or bf16 (default: bf16 on cuda; the CPU backend is f32 only)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd.add_option("--gpu-memory-fraction", gpu_memory_fraction,
                 "Share of the GPU's memory taken once at start as the arena for weights, caches and scratch, in (0, 1]")
      ->capture_default_str();
  cmd.add_option("--cuda-graphs", cuda_graphs, "CUDA graphs for decode steps: each steady step recorded once and replayed (results identical to eager launches)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
}

void BackendOptions::validate() const {
  if (backend != "cpu" && backend != "cuda") throw Error(str_cat("--backend: unknown backend '", backend, "' (cpu or cuda)"));
  if (!(gpu_memory_fraction > 0.0 && gpu_memory_fraction <= 1.0))
    throw Error(str_cat("--gpu-memory-fraction must be in (0, 1], got ", gpu_memory_fraction));
  if (!act_dtype.empty() && act_dtype != "f32" && act_dtype != "bf16")
    throw Error(str_cat("--act-dtype: '", act_dtype, "' is not f32 or bf16"));
  if (!is_cuda() && act_dtype == "bf16")
    throw Error("--act-dtype bf16 needs --backend cuda: the CPU backend computes activations in f32");
#ifndef CLAWMINE_HAVE_CUDA
  if (is_cuda())
    throw Error("--backend cuda: this clawmine was built without CUDA (nvcc was not found when it was configured)");
#endif
}

void BackendOptions::check_available() const {
  validate();
#ifdef CLAWMINE_HAVE_CUDA
  if (is_cuda() && backend::cuda::device_count() == 0)
    throw Error("--backend cuda: no CUDA device is available (no driver, or no GPU visible to this process)");
#endif
}

std::unique_ptr<ops::Backend> BackendOptions::create_backend(const ops::LinearPolicy& policy) const {
  validate();
  std::unique_ptr<ops::Backend> be;
  if (is_cuda()) {
#ifdef CLAWMINE_HAVE_CUDA
    backend::cuda::CudaOptions o;
    o.memory_fraction = gpu_memory_fraction;
    o.act_dtype = act_dtype == "f32" ? DType::kF32 : DType::kBF16;
    o.graphs = cuda_graphs == "on";
    be = backend::cuda::make_cuda_backend(o);
#endif
  } else {
    be = ops::make_cpu_backend(threads);
  }
  be->set_linear_policy(policy);
  return be;
}

LoadedModel ModelOptions::load() const {
  using Clock = std::chrono::steady_clock;
  LoadedModel m;
  m.backend = make_backend();
  auto t0 = Clock::now();
  m.model = model::deepseek_v4::Model::load(model_dir, load_options());
  auto t1 = Clock::now();
  m.load_seconds = std::chrono::duration<double>(t1 - t0).count();
  if (m.backend->device() != Device::kCpu) {
    m.model->place(*m.backend);
    m.backend->synchronize();  // the placement time includes the last upload landing
    m.place_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
    log_info("model", "loaded in ", m.load_seconds, " s, placed on ", m.backend->name(), " in ", m.place_seconds, " s");
  }
  return m;
}

void ModelOptions::add_to(CLI::App& cmd) {
  cmd.add_option("--model", model_dir, "Checkpoint directory (config.json + safetensors)")->required();
  add_backend_flags(cmd);
  add_forward_flags(cmd, official_qdq, indexer);
  cmd.add_option("--nvfp4-path", nvfp4_path,
                 "NVFP4 linears: w4a16 (dequantized weights, activations kept) or w4a4 (Blackwell emulation: "
                 "activations to FP4 with E4M3 scales per 16)")
      ->check(CLI::IsMember({"w4a16", "w4a4"}))
      ->capture_default_str();
  cmd.add_option("--fp8-path", fp8_path,
                 "FP8-block and MXFP4 linears: w8a16 (activations kept; the CPU default, closest to the dequantized "
                 "reference) or w8a8 (activations to FP8 per token per 128, power-of-two scales, as the release)")
      ->check(CLI::IsMember({"w8a16", "w8a8"}))
      ->capture_default_str();
  cmd.add_option("--act-scale", act_scale,
                 "W4A4 activation global scale: static (checkpoint input_scale), dynamic (2688/amax per token) or "
                 "auto (static only where input_scale exists and passed the load audit)")
      ->check(CLI::IsMember({"static", "dynamic", "auto"}))
      ->capture_default_str();
  cmd.add_option("--dequant", dequant,
                 "Decode matching linears to dense F32 at load: comma-separated globs over release names "
                 "(layers.*.attn.wq_a, layers.3.ffn.experts.*) and fused names (layers.*.attn.fused_wqa_wkv); "
                 "a glob matching nothing is an error");
  // Diagnostics only: E4M3 casts behave like PyTorch's (NaN above 464) instead of saturating.
  cmd.add_flag("--unsafe-nonsaturating-fp8", unsafe_nonsaturating_fp8,
               "Diagnostics only: non-saturating FP8 casts in W4A4 (reproduces the seed NaN)")
      ->group("");
}

ops::LinearPolicy ModelOptions::linear_policy() const {
  ops::LinearPolicy p;
  p.nvfp4 = nvfp4_path == "w4a4" ? ops::Nvfp4Path::kW4A4 : ops::Nvfp4Path::kW4A16;
  p.fp8 = fp8_path == "w8a8" ? ops::Fp8Path::kW8A8 : ops::Fp8Path::kW8A16;
  p.act_scale = act_scale == "static"    ? ops::ActScale::kStatic
                : act_scale == "dynamic" ? ops::ActScale::kDynamic
                                         : ops::ActScale::kAuto;
  p.saturate = !unsafe_nonsaturating_fp8;
  return p;
}

model::deepseek_v4::LoadOptions ModelOptions::load_options() const {
  model::deepseek_v4::LoadOptions o;
  o.policy = linear_policy();
  if (!dequant.empty()) o.dequant = model::deepseek_v4::parse_dequant_list(dequant);
  return o;
}

void add_forward_flags(CLI::App& cmd, std::string& official_qdq, std::string& indexer) {
  cmd.add_option("--official-qdq", official_qdq,
                 "Quantize-dequantize round trips of DeepSeek's inference code on the KV cache and indexer")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd.add_option("--indexer", indexer,
                 "CSA layers' lightning indexer: auto (skipped while its top-k would select every compressed entry, "
                 "i.e. the indexer store holds at most index_topk rows: the same key set) or always (run it anyway)")
      ->check(CLI::IsMember({"auto", "always"}))
      ->envname("CLAWMINE_INDEXER")
      ->capture_default_str();
}

model::deepseek_v4::ForwardOptions forward_options_of(const std::string& official_qdq, const std::string& indexer) {
  model::deepseek_v4::ForwardOptions o;
  o.official_qdq = official_qdq == "on";
  o.indexer_always = indexer == "always";
  return o;
}

model::deepseek_v4::ForwardOptions ModelOptions::forward_options() const {
  return forward_options_of(official_qdq, indexer);
}

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t\n"), e = item.find_last_not_of(" \t\n");
    if (b == std::string::npos) throw Error(str_cat(flag, ": empty item in the id list"));
    item = item.substr(b, e - b + 1);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX)
      throw Error(str_cat(flag, ": '", item, "' is not a token id (a non-negative integer)"));
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw Error(str_cat(flag, ": no token ids given"));
  return ids;
}

std::vector<int32_t> read_id_file(const std::string& path, const std::string& flag) {
  std::ifstream f(path);
  if (!f) throw Error(str_cat(flag, ": cannot read '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  for (char& ch : text)
    if (ch == '[' || ch == ']' || ch == '\n' || ch == '\r' || ch == '\t' || ch == ' ') ch = ',';
  std::string compact;
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] != ',' || (!compact.empty() && compact.back() != ',')) compact += text[i];
  while (!compact.empty() && compact.back() == ',') compact.pop_back();
  return parse_id_list(compact, str_cat(flag, " (", path, ")"));
}

void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const std::string& flag) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= vocab)
      throw Error(str_cat(flag, ": token id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab, ")"));
}

}  // namespace clawmine::cli
