// The served model and the request logic behind the routes: loads model + tokenizer +
// scheduler (in the background, so /health can answer 503 meanwhile), turns parsed requests
// into prompts and sequences, and produces OpenAI responses whole or as SSE chunks.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "model/deepseek_v4/model.h"
#include "runtime/scheduler.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace clawmine::server {

struct ServiceOptions {
  std::filesystem::path model_dir;
  std::string model_name;       // id in /v1/models and responses
  int64_t context_length = 0;   // 0: min(max_position_embeddings, 16384)
  int threads = 0;              // CPU backend threads (0: all cores)
  // Makes the serving backend (cli/serve.cpp: --backend and its flags); unset: the CPU backend
  // with `threads`. A non-CPU backend gets the model placed in its memory (Model::place).
  std::function<std::unique_ptr<ops::Backend>()> make_backend;
  runtime::SchedulerOptions scheduler;
  // Builds the non-finite guard's explainer for the loaded model on the serving backend
  // (cli/serve.cpp installs diag::make_replay_explainer); unset: guard errors carry no locator finding.
  std::function<runtime::NonFiniteExplainer(const model::deepseek_v4::Model&, ops::Backend&)> make_explainer;
};

// Writes one chunk to the client; false when the client has gone away.
using ChunkWriter = std::function<bool(const std::string&)>;

class Service {
 public:
  explicit Service(ServiceOptions options) : options_(std::move(options)) {}
  ~Service();

  // Loads everything; throws clawmine::Error (also kept for load_error()).
  void load();
  bool ready() const { return ready_; }
  std::string load_error() const;
  const std::string& model_name() const { return options_.model_name; }
  Metrics& metrics() { return metrics_; }

  std::string models_json() const;
  std::string metrics_text() const;
  std::string tokenize(std::string_view body) const;
  std::string detokenize(std::string_view body) const;

  // A validated, admitted completion (sequences already queued); run it whole or streamed.
  class Job;
  std::shared_ptr<Job> start_chat(std::string_view body);
  std::shared_ptr<Job> start_completion(std::string_view body);

 private:
  friend class Job;
  void check_model(const std::string& requested) const;
  std::shared_ptr<Job> start(const GenerationFields& gen, std::vector<int32_t> prompt, bool chat, bool thinking,
                             const std::string& echo_text, const char* prompt_param);

  ServiceOptions options_;
  std::atomic<bool> ready_{false};
  mutable std::mutex mu_;
  std::string load_error_;
  // Declared before model_: the model's device copies (Model::place) are released into it. The
  // scheduler borrows it (it must not own it: it goes before the model).
  std::unique_ptr<ops::Backend> backend_;
  std::unique_ptr<model::deepseek_v4::Model> model_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<runtime::Scheduler> scheduler_;
  int64_t context_length_ = 0;
  int64_t created_ = 0;
  Metrics metrics_;
};

class Service::Job {
 public:
  ~Job();
  // The whole response body (JSON); throws ApiError on a failed sequence.
  std::string run();
  // SSE chunks through write, ending with [DONE]; failures become an error event.
  void run_stream(const ChunkWriter& write);
  bool stream() const;

 private:
  friend class Service;
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace clawmine::server
