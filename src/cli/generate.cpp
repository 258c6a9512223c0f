// `clawmine generate`: prefill a prompt of token ids and sample up to --max-tokens ids,
// printed space-separated (or as JSON with --json).
#include <algorithm>
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/log.h"
#include "diag/replay.h"
#include "diag/trace_session.h"
#include "runtime/generate.h"

namespace clawmine::cli {

void add_generate_command(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string ids, prompt_file, trace;
    runtime::GenerateOptions gen;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Generate token ids from a prompt of token ids");
  args->model.add_to(*cmd);
  auto* ids = cmd->add_option("--ids", args->ids, "Comma-separated prompt token ids");
  cmd->add_option("--prompt-file", args->prompt_file, "File of prompt token ids")->excludes(ids);
  cmd->add_option("--max-tokens", args->gen.max_tokens, "Tokens to generate")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--temperature", args->gen.sampling.temperature, "0 is greedy")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--top-p", args->gen.sampling.top_p, "Nucleus mass in (0, 1]")->check(CLI::Range(1e-6, 1.0))->capture_default_str();
  cmd->add_option("--top-k", args->gen.sampling.top_k, "Keep the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->gen.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--chunk", args->gen.prefill_chunk, "Prefill chunk size (0: whole prompt)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--trace", args->trace, "Trace every op as JSON lines to FILE ('-': stderr); summary on stderr");
  cmd->add_flag("--json", args->json, "Print {\"prompt\": [...], \"tokens\": [...]} as JSON");
  cmd->callback([args] {
    const bool from_file = !args->prompt_file.empty();
    const auto prompt = from_file ? read_id_file(args->prompt_file, "--prompt-file") : parse_id_list(args->ids, "--ids");
    auto model = model::deepseek_v4::Model::load(args->model.model_dir, args->model.load_options());
    check_ids(prompt, model->config().vocab_size, from_file ? "--prompt-file" : "--ids");
    auto backend = args->model.make_backend();
    args->gen.forward = args->model.forward_options();
    args->gen.explain_non_finite = diag::make_replay_explainer(*model, backend->linear_policy(), args->gen.forward,
                                                               args->gen.prefill_chunk);
    diag::TraceSession trace(*backend, args->trace);
    const bool json = args->json;
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    auto first = start;
    const auto tokens = runtime::generate(*model, trace.backend(), prompt, args->gen, [&](int32_t id) {
      if (first == start) first = Clock::now();
      if (!json) {
        std::printf("%d ", id);
        std::fflush(stdout);
      }
    });
    const double prefill_s = std::chrono::duration<double>(first - start).count();
    const double decode_s = std::chrono::duration<double>(Clock::now() - first).count();
    const size_t decoded = tokens.size() > 1 ? tokens.size() - 1 : 0;
    log_info("generate", "prompt ", prompt.size(), " tokens in ", prefill_s * 1e3, " ms (",
             prompt.size() / std::max(prefill_s, 1e-9), " tok/s); ", decoded, " decode steps, ",
             decoded ? decode_s * 1e3 / decoded : 0.0, " ms/token");
    if (json) {
      std::printf("%s\n", nlohmann::json{{"prompt", prompt}, {"tokens", tokens}}.dump().c_str());
    } else {
      std::printf("\n");
    }
  });
}

}  // namespace clawmine::cli
