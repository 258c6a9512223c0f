// `clawmine quantize`: loads any checkpoint, decodes every linear exactly to float32, calibrates
// the static NVFP4 input scales (amax/2688 of each module's input over calibration ids, recorded
// by diag::ActivationRecorder on the input model) and writes the scheme's layout with
// quant::write_quantized_checkpoint. Layouts and flags: docs/FIXTURES.md "Quantized fixtures".
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "backend/cpu/weight_decode.h"
#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "core/log.h"
#include "diag/activation_recorder.h"
#include "model/deepseek_v4/model.h"
#include "model/deepseek_v4/weight_walk.h"
#include "quant/quantizer.h"

namespace clawmine::cli {

namespace {

namespace fs = std::filesystem;
namespace dsv4 = model::deepseek_v4;

// The built-in calibration set: a strided sweep over the vocabulary (every id once for small
// vocabularies, so hash-routed experts all see tokens) and a pseudo-random sequence.
std::vector<std::vector<int32_t>> builtin_calibration(int64_t vocab) {
  std::vector<std::vector<int32_t>> seqs;
  const int64_t n = std::min<int64_t>(vocab, 512);
  std::vector<int32_t> sweep;
  for (int64_t i = 0; i < n; ++i) sweep.push_back(static_cast<int32_t>((i * 7919) % vocab));
  for (size_t b = 0; b < sweep.size(); b += 256)
    seqs.emplace_back(sweep.begin() + b, sweep.begin() + std::min(sweep.size(), b + 256));
  std::vector<int32_t> random;
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 192; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    random.push_back(static_cast<int32_t>(2 + (s >> 33) % static_cast<uint64_t>(std::max<int64_t>(vocab - 2, 1))));
  }
  seqs.push_back(random);
  return seqs;
}

std::map<std::string, float> calibrate(const dsv4::Model& model, const std::vector<std::vector<int32_t>>& seqs,
                                       int threads) {
  auto cpu = ops::make_cpu_backend(threads);
  diag::ActivationRecorder recorder(*cpu);
  dsv4::ForwardOptions fo;
  for (const auto& ids : seqs) {
    dsv4::SequenceCache cache = model.new_cache();
    model.forward(recorder, cache, ids, fo);
  }
  std::map<std::string, float> amax;
  for (const diag::LinearActivationStats& s : recorder.stats()) {
    if (s.nonfinite > 0) throw Error(str_cat("--calib: the input of ", s.name, " had ", s.nonfinite, " non-finite values"));
    amax[s.name] = s.amax;
  }
  return amax;
}

nlohmann::json read_config(const fs::path& dir) {
  std::ifstream f(dir / "config.json");
  if (!f) throw Error(str_cat("--model: cannot read ", (dir / "config.json").string()));
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw Error(str_cat((dir / "config.json").string(), ": invalid JSON: ", e.what()));
  }
}

std::vector<std::string> split_globs(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  struct Args {
    std::string model, out, scheme, calib, scale_fmt = "ue8m0", mult_modules;
    double mult = 1.0;
    bool fuse = false;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("quantize", "Write a quantized copy of a checkpoint (FP8 block, MXFP4, NVFP4 layouts)");
  cmd->add_option("--model", args->model, "Input checkpoint directory (any loadable layout)")->required();
  cmd->add_option("--out", args->out, "Output directory")->required();
  cmd->add_option("--scheme", args->scheme, "nvfp4-experts | nvfp4-all | nvfp4-w4a16 | fp8-block | mxfp4-experts")
      ->required();
  cmd->add_option("--calib", args->calib, "Calibration token ids (JSON list or separated integers); default: built-in");
  cmd->add_option("--input-scale-mult", args->mult, "Multiply every written input_scale (deliberate mis-calibration)")
      ->capture_default_str();
  cmd->add_option("--input-scale-mult-modules", args->mult_modules,
                  "Comma-separated globs: apply --input-scale-mult only to these modules (default: all)");
  cmd->add_flag("--fuse-wqa-wkv", args->fuse, "Store NVFP4 wq_a and wkv as layers.N.attn.fused_wqa_wkv");
  cmd->add_option("--scale-fmt", args->scale_fmt, "FP8-block scales: ue8m0 (`.scale` E8M0) or f32 (`.weight_scale_inv`)")
      ->capture_default_str();
  cmd->add_option("--threads", args->threads, "CPU threads for calibration (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->callback([args] {
    quant::QuantizeOptions o;
    o.scheme = quant::parse_scheme(args->scheme, "--scheme");
    if (args->scale_fmt == "ue8m0") {
      o.fp8_scale = quant::ScaleDType::kE8M0;
    } else if (args->scale_fmt == "f32") {
      o.fp8_scale = quant::ScaleDType::kF32;
    } else {
      throw Error(str_cat("--scale-fmt: expected ue8m0 or f32, got \"", args->scale_fmt, "\""));
    }
    if (!(std::isfinite(args->mult) && args->mult > 0.0 && args->mult <= 1e6))
      throw Error(str_cat("--input-scale-mult: must be in (0, 1e6], got ", args->mult));
    o.input_scale_mult = args->mult;
    o.input_scale_mult_modules = split_globs(args->mult_modules);
    o.fuse_wqa_wkv = args->fuse;
    if (!quant::scheme_has_input_scales(o.scheme) && (args->mult != 1.0 || !args->calib.empty()))
      throw Error(str_cat(args->mult != 1.0 ? "--input-scale-mult" : "--calib", ": scheme ", args->scheme,
                          " writes no input_scale"));
    const fs::path in_dir = args->model, out_dir = args->out;
    if (!fs::is_directory(in_dir)) throw Error(str_cat("--model: not a directory: ", in_dir.string()));
    std::error_code ec;
    if (fs::exists(out_dir) && fs::equivalent(in_dir, out_dir, ec))
      throw Error("--out: must differ from --model (the input would be overwritten)");

    auto model = dsv4::Model::load(in_dir);
    std::vector<quant::SourceLinear> linears;
    std::vector<quant::SourceTensor> tensors;
    dsv4::for_each_weight(model->weights(), [&](const dsv4::WeightRef& r) {
      if (r.tensor) {
        tensors.push_back({r.name, *r.tensor});
        return;
      }
      const dsv4::LinearWeight* w = r.linear;
      backend::cpu::validate_linear_weight(*w);
      quant::SourceLinear l;
      l.name = w->name;
      l.out_features = w->out_features;
      l.in_features = w->in_features;
      if (w->format == dsv4::WeightFormat::kDense) l.dense = w->weight;
      l.decode_row = [w](int64_t row, float* out) { backend::cpu::decode_row(*w, row, out); };
      linears.push_back(std::move(l));
    });
    // Reject a bad scheme/module combination before spending time on calibration.
    quant::plan_linears(linears, o);

    if (quant::scheme_has_input_scales(o.scheme)) {
      std::vector<std::vector<int32_t>> seqs;
      if (args->calib.empty()) {
        seqs = builtin_calibration(model->config().vocab_size);
      } else {
        seqs.push_back(read_id_file(args->calib, "--calib"));
        check_ids(seqs.back(), model->config().vocab_size, "--calib");
      }
      o.input_amax = calibrate(*model, seqs, args->threads);
    }
    const quant::QuantizedModel q = quant::quantize_model(linears, tensors, o);
    quant::write_quantized_checkpoint(out_dir, q, read_config(in_dir), o);
    for (const char* extra : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
      if (fs::exists(in_dir / extra)) fs::copy_file(in_dir / extra, out_dir / extra, fs::copy_options::overwrite_existing);
    }
    std::map<std::string, int> by_format;
    for (const quant::PlannedLinear& p : q.plan) ++by_format[quant::linear_format_name(p.format)];
    std::string summary;
    for (const auto& [f, n] : by_format) summary += str_cat(summary.empty() ? "" : ", ", n, " ", f);
    log_info("quantize", "scheme ", quant::scheme_name(o.scheme), ": ", q.plan.size(), " linears (", summary, "), ",
             q.tensors.size(), " tensors written to ", out_dir.string());
    if (!q.input_scales.empty()) {
      auto [lo, hi] = std::minmax_element(q.input_scales.begin(), q.input_scales.end(),
                                          [](const auto& a, const auto& b) { return a.second < b.second; });
      log_info("quantize", q.input_scales.size(), " input scales in [", lo->second, " (", lo->first, "), ",
               hi->second, " (", hi->first, ")]");
    }
  });
}

}  // namespace clawmine::cli
