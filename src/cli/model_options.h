// Flags that every model-running subcommand shares (--model, the backend flags --backend,
// --threads, --act-dtype, --gpu-memory-fraction, --cuda-graphs, --official-qdq, the
// quantized-linear paths --nvfp4-path/--fp8-path/--act-scale), the one place that makes the
// backend and loads + places the model, and the token-id list parser.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"

namespace clawmine::cli {

// Where a model runs: --backend cpu|cuda, --threads, --act-dtype, --gpu-memory-fraction,
// --cuda-graphs. Commands with flags of their own for threads (serve, doctor) register the rest.
struct BackendOptions {
  std::string backend = "cpu";
  int threads = 0;                   // CPU backend threads (0: all cores)
  std::string act_dtype;             // f32 | bf16; empty: bf16 on cuda, f32 on cpu
  double gpu_memory_fraction = 0.90; // of the device's memory, taken once as the arena
  std::string cuda_graphs = "on";    // CUDA graphs for decode steps (docs/PERFORMANCE.md)

  void add_backend_flags(CLI::App& cmd, bool with_threads = true);
  bool is_cuda() const { return backend == "cuda"; }
  // Checks the flags together, each error naming its flag: --backend cuda in a binary built
  // without CUDA, --act-dtype bf16 on the CPU, --gpu-memory-fraction outside (0, 1].
  void validate() const;
  // validate(), and for cuda that a device is visible (without taking the arena): lets a
  // command fail before it loads a model or starts a server.
  void check_available() const;
  // The backend these flags ask for, with `policy` applied (throws clawmine::Error naming the flag).
  std::unique_ptr<ops::Backend> create_backend(const ops::LinearPolicy& policy) const;
};

// A model loaded for a backend: weights placed in its memory (Model::place) unless it is the CPU.
// The backend is declared first so it outlives the model's device copies.
struct LoadedModel {
  std::unique_ptr<ops::Backend> backend;
  std::unique_ptr<model::deepseek_v4::Model> model;
  double load_seconds = 0;   // Model::load (mmap, bind, validation, load audit)
  double place_seconds = 0;  // Model::place (0 on the CPU)
};

// --official-qdq on|off and --indexer auto|always (env CLAWMINE_INDEXER): the forward pass's
// options, for the model commands and serve; forward_options_of turns the two values into them.
void add_forward_flags(CLI::App& cmd, std::string& official_qdq, std::string& indexer);
model::deepseek_v4::ForwardOptions forward_options_of(const std::string& official_qdq, const std::string& indexer);

struct ModelOptions : BackendOptions {
  std::string model_dir;
  std::string official_qdq = "on";
  // --indexer auto: CSA layers skip the indexer where its top-k would select every entry;
  // always: run it anyway (ForwardOptions::indexer_always; env CLAWMINE_INDEXER).
  std::string indexer = "auto";
  // How quantized linears treat activations (ops::LinearPolicy, docs/QUANTIZATION.md). CPU
  // defaults: W4A16 and W8A16 (dequantized weights, float32 activations: closest to the
  // dequantized reference); auto = dynamic wherever the static input_scale is absent or the
  // load audit found it overflowing.
  std::string nvfp4_path = "w4a16";
  std::string fp8_path = "w8a16";
  std::string act_scale = "auto";
  bool unsafe_nonsaturating_fp8 = false;  // hidden: reproduces the seed NaN (diagnostics only)
  // --dequant GLOB[,GLOB...]: modules decoded to dense F32 at load (release or fused names).
  std::string dequant;

  void add_to(CLI::App& cmd);
  model::deepseek_v4::ForwardOptions forward_options() const;
  ops::LinearPolicy linear_policy() const;
  // The load options these flags imply (policy; the load audit on).
  model::deepseek_v4::LoadOptions load_options() const;
  // A backend with linear_policy() applied.
  std::unique_ptr<ops::Backend> make_backend() const { return create_backend(linear_policy()); }
  // Every model-running command's start: the backend (failing fast when it is unavailable), then
  // Model::load, then Model::place on a non-CPU backend, timed.
  LoadedModel load() const;
};

// "0,17,42" -> ids; errors name `flag` and the offending item.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag);
// A file of ids: a JSON array or whitespace/comma separated integers.
std::vector<int32_t> read_id_file(const std::string& path, const std::string& flag);
// Every id within [0, vocab) or an error naming the flag, the position and the vocabulary size.
void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const std::string& flag);

}  // namespace clawmine::cli
