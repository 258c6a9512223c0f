// `clawmine doctor`: static audit, calibration and accuracy passes over a checkpoint
// (diag/doctor.h); the ranked findings and tables on stdout, --json / --html reports on request.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "core/log.h"
#include "diag/doctor.h"

namespace clawmine::cli {

namespace {

// A JSON list of ids or of id lists, or text with one sequence per line (ids separated by
// spaces or commas).
std::vector<std::vector<int32_t>> read_calibration_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(str_cat("--calib: cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::vector<int32_t>> out;
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
      if (!j.empty() && j[0].is_array()) out = j.get<std::vector<std::vector<int32_t>>>();
      else out.push_back(j.get<std::vector<int32_t>>());
    } catch (const nlohmann::json::exception& e) {
      throw Error(str_cat("--calib ", path, ": expected a JSON list of token ids or of id lists: ", e.what()));
    }
  } else {
    std::istringstream lines(text);
    std::string line;
    for (int n = 1; std::getline(lines, line); ++n) {
      for (char& c : line)
        if (c == ',') c = ' ';
      std::istringstream items(line);
      std::vector<int32_t> seq;
      std::string item;
      while (items >> item) {
        try {
          size_t used = 0;
          const long v = std::stol(item, &used);
          if (used != item.size()) throw std::invalid_argument(item);
          seq.push_back(static_cast<int32_t>(v));
        } catch (const std::exception&) {
          throw Error(str_cat("--calib ", path, " line ", n, ": '", item, "' is not a token id"));
        }
      }
      if (!seq.empty()) out.push_back(std::move(seq));
    }
  }
  for (const auto& s : out)
    if (s.empty()) throw Error(str_cat("--calib ", path, ": an empty sequence"));
  if (out.empty()) throw Error(str_cat("--calib ", path, ": no token ids"));
  return out;
}

void write_file(const std::string& path, const std::string& text, const char* flag) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) throw Error(str_cat(flag, ": cannot write ", path));
  out << text;
}

}  // namespace

void add_doctor_command(CLI::App& app) {
  struct Args {
    diag::DoctorOptions opt;
    std::string calib, json, html, act_scale = "auto";
    BackendOptions backend;  // --threads is the doctor's own (DoctorOptions::threads)
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("doctor", "Audit a checkpoint's numerics: scales, calibration, accuracy, fixes");
  cmd->add_option("--model", args->opt.model_dir, "Model directory")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--calib", args->calib, "Calibration token ids (JSON list / list of lists, or one sequence a line)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--json", args->json, "Write the report as JSON to this file");
  cmd->add_option("--html", args->html, "Write a self-contained HTML report (inline SVG plots) to this file");
  cmd->add_option("--trace", args->opt.trace_file, "Write the quantized run's op trace as JSON lines to this file");
  cmd->add_option("--act-scale", args->act_scale, "W4A4 activation scale judged: static|dynamic|auto")
      ->check(CLI::IsMember({"static", "dynamic", "auto"}))
      ->capture_default_str();
  cmd->add_flag("--unsafe-nonsaturating-fp8", [args](int64_t) { args->opt.saturate = false; },
                "Judge a non-saturating E4M3 cast (as PyTorch's .to(float8_e4m3fn)), which turns overflow into NaN");
  cmd->add_option("--dequant", args->opt.dequant, "Keep modules matching these globs in BF16")->delimiter(',');
  cmd->add_option("--threads", args->opt.threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  args->backend.add_backend_flags(*cmd, /*with_threads=*/false);
  cmd->callback([args] {
    args->backend.check_available();
    diag::DoctorOptions o = args->opt;
    o.act_scale = args->act_scale == "static"    ? ops::ActScale::kStatic
                  : args->act_scale == "dynamic" ? ops::ActScale::kDynamic
                                                 : ops::ActScale::kAuto;
    if (!args->calib.empty()) o.calib = read_calibration_file(args->calib);
    // The doctor loads the model, calibrates on the host, places it on this backend and runs
    // its accuracy passes there (diag/doctor.h).
    args->backend.threads = o.threads;
    const auto backend = args->backend.create_backend(ops::LinearPolicy{});
    const diag::DoctorReport r = diag::run_doctor(o, *backend);
    std::fputs(diag::doctor_text(r).c_str(), stdout);
    if (!args->json.empty()) write_file(args->json, diag::doctor_json(r).dump(2) + "\n", "--json");
    if (!args->html.empty()) write_file(args->html, diag::doctor_html(r), "--html");
  });
}

}  // namespace clawmine::cli
