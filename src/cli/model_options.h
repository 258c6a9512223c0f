// Flags that every model-running subcommand shares (--model, --backend, --threads,
// --official-qdq, the quantized-linear paths --nvfp4-path/--fp8-path/--act-scale) and the
// token-id list parser, so each command declares them the same way.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "model/deepseek_v4/model.h"
#include "ops/backend.h"

namespace clawmine::cli {

struct ModelOptions {
  std::string model_dir;
  std::string backend = "cpu";
  int threads = 0;
  std::string official_qdq = "on";
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
  std::unique_ptr<ops::Backend> make_backend() const;
};

// "0,17,42" -> ids; errors name `flag` and the offending item.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag);
// A file of ids: a JSON array or whitespace/comma separated integers.
std::vector<int32_t> read_id_file(const std::string& path, const std::string& flag);
// Every id within [0, vocab) or an error naming the flag, the position and the vocabulary size.
void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const std::string& flag);

}  // namespace clawmine::cli
