// `clawmine serve`: the OpenAI-compatible HTTP server. Without --model it serves the embedded
// demo model (tests/fixtures/models/tiny-a in the source tree: tiny random weights until the
// trained demo model replaces it, so its text is gibberish). SIGINT/SIGTERM stop it cleanly.
#include <csignal>
#include <filesystem>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "diag/replay.h"
#include "server/http_server.h"

#ifndef CLAWMINE_DEMO_MODEL_DIR
#error "CLAWMINE_DEMO_MODEL_DIR must be defined by the build"
#endif

namespace clawmine::cli {
namespace {

server::HttpServer* g_server = nullptr;

void on_signal(int) {
  if (g_server) g_server->stop();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  struct Args {
    std::string model_dir, model_name;
    server::HttpOptions http;
    server::ServiceOptions service;
    BackendOptions backend;  // --threads is ServiceOptions::threads
    std::string batch_decode = "on";
    std::string official_qdq = "on", indexer = "auto";
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (demo model when --model is not given)");
  cmd->add_option("--model", args->model_dir, "Checkpoint directory with tokenizer.json (default: the embedded demo model)");
  cmd->add_option("--served-model-name", args->model_name, "Model id clients use (default: the directory name)");
  cmd->add_option("--host", args->http.host, "Address to bind")->capture_default_str();
  cmd->add_option("--port", args->http.port, "Port (0: any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--api-key", args->http.api_key, "Require 'Authorization: Bearer KEY' on all routes but /health");
  cmd->add_flag("--cors", args->http.cors, "Send permissive CORS headers (off by default)");
  cmd->add_option("--max-body-bytes", args->http.max_body_bytes, "Request body size limit")->capture_default_str();
  cmd->add_option("--http-threads", args->http.http_threads, "Connections served at once")->check(CLI::Range(4, 4096))->capture_default_str();
  cmd->add_option("--context-length", args->service.context_length, "Prompt + completion token limit (0: min(model, 16384))")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", args->service.threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  args->backend.add_backend_flags(*cmd, /*with_threads=*/false);
  cmd->add_option("--max-running", args->service.scheduler.max_running, "Sequences decoded together")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--max-waiting", args->service.scheduler.max_waiting, "Queued sequences before answering 429")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--prefill-chunk", args->service.scheduler.prefill_chunk, "Prompt tokens per sequence per step")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--batch-decode", args->batch_decode,
                  "on: the running sequences past their prompt take their next token in one batched forward "
                  "per step (weights read once for all); off: one forward per sequence (on CUDA, each "
                  "request's tokens then do not depend on what else runs)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  add_forward_flags(*cmd, args->official_qdq, args->indexer);
  cmd->callback([args] {
    args->backend.check_available();  // before listening: the model loads in the background
    args->service.scheduler.batch_decode = args->batch_decode == "on";
    args->service.scheduler.forward = forward_options_of(args->official_qdq, args->indexer);
    std::filesystem::path dir = args->model_dir;
    std::string name = args->model_name;
    if (dir.empty()) {
      dir = CLAWMINE_DEMO_MODEL_DIR;
      if (!std::filesystem::exists(dir / "config.json") || !std::filesystem::exists(dir / "tokenizer.json"))
        throw Error(str_cat("the embedded demo model is missing at ", dir.string(),
                            " (config.json + tokenizer.json); pass --model DIR or restore the source tree"));
      if (name.empty()) name = "clawmine-demo";
    }
    if (name.empty()) name = std::filesystem::absolute(dir).lexically_normal().filename().string();
    if (name.empty()) name = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
    args->service.model_dir = dir;
    args->service.make_backend = [args] {
      BackendOptions b = args->backend;
      b.threads = args->service.threads;
      return b.create_backend(ops::LinearPolicy{});
    };
    args->service.make_explainer = [args](const model::deepseek_v4::Model& m, ops::Backend& be) {
      return diag::make_replay_explainer(m, be, ops::LinearPolicy{}, args->service.scheduler.forward,
                                         args->service.scheduler.prefill_chunk);
    };
    args->service.model_name = name;
    server::HttpServer server(args->http, args->service);
    g_server = &server;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    server.run();
    g_server = nullptr;
  });
}

}  // namespace clawmine::cli
