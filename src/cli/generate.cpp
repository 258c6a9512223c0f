// `clawmine generate`: prefill a prompt of token ids and sample up to --max-tokens ids,
// printed space-separated (or as JSON with --json).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/log.h"
#include "diag/replay.h"
#include "diag/trace_session.h"
#include "runtime/generate.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace clawmine::cli {

void add_generate_command(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string ids, prompt_file, text, trace;
    bool chat = false;
    runtime::GenerateOptions gen;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Generate token ids from a prompt of token ids");
  args->model.add_to(*cmd);
  auto* ids = cmd->add_option("--ids", args->ids, "Comma-separated prompt token ids");
  auto* file = cmd->add_option("--prompt-file", args->prompt_file, "File of prompt token ids")->excludes(ids);
  auto* text = cmd->add_option("--text", args->text, "Prompt text, tokenized with the model's tokenizer.json")
                   ->excludes(ids)
                   ->excludes(file);
  cmd->add_flag("--chat", args->chat, "Wrap --text as one user turn of the V4 chat encoding (chat mode)")->needs(text);
  cmd->add_option("--max-tokens", args->gen.max_tokens, "Tokens to generate")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--temperature", args->gen.sampling.temperature, "0 is greedy")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--top-p", args->gen.sampling.top_p, "Nucleus mass in (0, 1]")->check(CLI::Range(1e-6, 1.0))->capture_default_str();
  cmd->add_option("--top-k", args->gen.sampling.top_k, "Keep the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->gen.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--chunk", args->gen.prefill_chunk, "Prefill chunk size (0: whole prompt)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--trace", args->trace, "Trace every op as JSON lines to FILE ('-': stderr); summary on stderr");
  cmd->add_flag("--json", args->json, "Print {\"prompt\": [...], \"tokens\": [...], \"text\"} as JSON");
  cmd->callback([args] {
    args->model.check_available();  // flag errors before any input is read
    // With a tokenizer in the model directory, output is text; prompts may be text too.
    std::optional<tokenizer::Tokenizer> tok;
    if (std::filesystem::exists(std::filesystem::path(args->model.model_dir) / "tokenizer.json"))
      tok = tokenizer::Tokenizer::load(args->model.model_dir);
    const bool from_file = !args->prompt_file.empty(), from_text = !args->text.empty();
    std::vector<int32_t> prompt;
    if (from_text) {
      if (!tok) throw Error(str_cat("--text needs ", args->model.model_dir, "/tokenizer.json; pass --ids instead"));
      std::string text = args->text;
      if (args->chat) {
        tokenizer::ChatMessage user;
        user.role = "user";
        user.content = text;
        text = tokenizer::encode_messages({user}, tokenizer::ChatEncodeOptions{});
      }
      prompt = tok->encode(text);
      if (!args->chat) prompt.insert(prompt.begin(), 0);  // raw text starts like a document: BOS
    } else {
      prompt = from_file ? read_id_file(args->prompt_file, "--prompt-file") : parse_id_list(args->ids, "--ids");
    }
    LoadedModel m = args->model.load();
    const auto& model = m.model;
    if (from_text && !args->chat) prompt[0] = static_cast<int32_t>(model->config().bos_token_id);
    check_ids(prompt, model->config().vocab_size, from_text ? "--text" : from_file ? "--prompt-file" : "--ids");
    args->gen.forward = args->model.forward_options();
    // The guard's explainer replays on the backend that ran (the model is placed there).
    args->gen.explain_non_finite = diag::make_replay_explainer(*model, *m.backend, m.backend->linear_policy(),
                                                               args->gen.forward, args->gen.prefill_chunk);
    diag::TraceSession trace(*m.backend, args->trace);
    const bool json = args->json;
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    auto first = start;
    std::optional<tokenizer::StreamDecoder> detok;
    if (tok) detok.emplace(*tok, true);
    const auto tokens = runtime::generate(*model, trace.backend(), prompt, args->gen, [&](int32_t id) {
      if (first == start) first = Clock::now();
      if (json) return;
      if (detok) {
        std::fputs(detok->push(id).c_str(), stdout);
      } else {
        std::printf("%d ", id);
      }
      std::fflush(stdout);
    });
    const double prefill_s = std::chrono::duration<double>(first - start).count();
    const double decode_s = std::chrono::duration<double>(Clock::now() - first).count();
    const size_t decoded = tokens.size() > 1 ? tokens.size() - 1 : 0;
    log_info("generate", "prompt ", prompt.size(), " tokens in ", prefill_s * 1e3, " ms (",
             prompt.size() / std::max(prefill_s, 1e-9), " tok/s); ", decoded, " decode steps, ",
             decoded ? decode_s * 1e3 / decoded : 0.0, " ms/token");
    if (json) {
      nlohmann::json out{{"prompt", prompt}, {"tokens", tokens}};
      if (tok) out["text"] = tok->decode(tokens, true);
      std::printf("%s\n", out.dump().c_str());
    } else {
      std::printf("%s\n", detok ? detok->finish().c_str() : "");
    }
  });
}

}  // namespace clawmine::cli
