#include "server/service.h"

#include <chrono>
#include <ctime>
#include <random>

#include "core/error.h"
#include "core/log.h"
#include "diag/forwarding_backend.h"
#include "server/api_error.h"
#include "server/choice_stream.h"
#include "server/openai_response.h"
#include "server/sse.h"
#include "tokenizer/chat_encoding.h"

namespace clawmine::server {

using Clock = std::chrono::steady_clock;
using runtime::FinishReason;
using runtime::SampledToken;

namespace {

// What the scheduler owns: a forwarder to the service's backend (decode-step graphs included),
// so the backend outlives the scheduler and the model's device copies.
class LentBackend final : public diag::ForwardingBackend {
 public:
  using diag::ForwardingBackend::ForwardingBackend;
  bool replay_step_graph(uint64_t key) override { return inner().replay_step_graph(key); }
  void retire_step_graph(uint64_t key) override { inner().retire_step_graph(key); }
  void begin_step_graph(uint64_t key) override { inner().begin_step_graph(key); }
  void end_step_graph() override { inner().end_step_graph(); }
  void branch(int b) override { inner().branch(b); }
  void branch_early(int b) override { inner().branch_early(b); }
  void branch_wait(int b) override { inner().branch_wait(b); }
  void join_branches() override { inner().join_branches(); }
  // Fused ops go to the backend whole (the default would split them into their parts).
  void norm_rope_qdq(const TensorView& x, const ops::Backend::VecPrep& p, const TensorView& positions,
                     const TensorView& inv_freq) override {
    inner().norm_rope_qdq(x, p, positions, inv_freq);
  }
  void hc_post_pre(const TensorView& y, const TensorView& y_add, const TensorView& X, const TensorView& post,
                   const TensorView& comb, const TensorView& X_out, const ops::HyperConnectionWeights& w,
                   const ops::HcParams& p, const TensorView& norm_weight, float eps, const TensorView& x_in,
                   const TensorView& post_out, const TensorView& comb_out) override {
    inner().hc_post_pre(y, y_add, X, post, comb, X_out, w, p, norm_weight, eps, x_in, post_out, comb_out);
  }
  void linear_multi(const TensorView& x, const ops::Backend::LinearJob* jobs, int64_t n_jobs) override {
    inner().linear_multi(x, jobs, n_jobs);
  }
  void moe_router(const TensorView& x, const ops::LinearWeight& gate, const TensorView& bias, const TensorView& tid2eid,
                  const TensorView& ids, float routed_scaling, const TensorView& logits, const TensorView& idx,
                  const TensorView& weight) override {
    inner().moe_router(x, gate, bias, tid2eid, ids, routed_scaling, logits, idx, weight);
  }
  void compress_store(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const ops::CompressorStateView& state,
                      const ops::Backend::VecPrep& prep, const TensorView& inv_freq, const TensorView& pooled,
                      const TensorView& entry_positions, const TensorView& entries) override {
    inner().compress_store(kv, gate, ape, positions, rate, overlap, state, prep, inv_freq, pooled, entry_positions,
                           entries);
  }
  void sparse_attention_rope(const TensorView& q, const TensorView& kv, const TensorView& entries,
                             const TensorView& idx, const TensorView& sink, float scale, const TensorView& positions,
                             const TensorView& inv_freq, int64_t rope_dim, const TensorView& out) override {
    inner().sparse_attention_rope(q, kv, entries, idx, sink, scale, positions, inv_freq, rope_dim, out);
  }
};

}  // namespace

struct Service::Job::State {
  Service* service = nullptr;
  bool chat = false;
  bool stream = false;
  std::string id;
  int64_t created = 0;
  int64_t prompt_tokens = 0;
  std::optional<int64_t> logprobs;
  bool include_usage = false;
  std::string echo_text;
  Clock::time_point start;
  std::vector<std::shared_ptr<runtime::SequenceHandle>> handles;
  std::vector<ChoiceStream> streams;
  std::vector<int64_t> text_offsets;
  std::vector<size_t> tool_calls_seen;

  Json chunk_base() const {
    return Json{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", service->model_name()}};
  }
  void cancel_all() {
    for (auto& h : handles) h->cancel();
  }
  // Drives all choices; emit(i, delta, finish_reason or "") returns false when the client is gone.
  bool drive(const std::function<bool(size_t, ChoiceDelta&, const std::string&)>& emit);
  Json delta_json(size_t i, ChoiceDelta& d, bool first);
};

namespace {

std::string finish_name(FinishReason r, bool stopped, bool tool_calls) {
  if (r == FinishReason::kLength && !stopped) return "length";
  return tool_calls ? "tool_calls" : "stop";
}

void merge(ChoiceDelta& into, ChoiceDelta&& d) {
  into.text += d.text;
  into.chat.reasoning_content += d.chat.reasoning_content;
  into.chat.content += d.chat.content;
  for (auto& c : d.chat.tool_calls) into.chat.tool_calls.push_back(std::move(c));
  for (auto& t : d.logprobs) into.logprobs.push_back(std::move(t));
}

}  // namespace

bool Service::Job::State::drive(const std::function<bool(size_t, ChoiceDelta&, const std::string&)>& emit) {
  const size_t n = handles.size();
  std::vector<bool> done(n, false);
  std::vector<Clock::time_point> last(n, start);
  size_t remaining = n;
  Metrics& m = service->metrics();
  const auto wait = std::chrono::milliseconds(n == 1 ? 200 : 5);
  while (remaining > 0) {
    for (size_t i = 0; i < n; ++i) {
      if (done[i]) continue;
      std::vector<SampledToken> got;
      const bool alive = handles[i]->take(got, wait);
      ChoiceDelta delta;
      const auto now = Clock::now();
      for (auto& t : got) {
        if (streams[i].stopped()) break;
        if (streams[i].tokens() == 0) {
          m.time_to_first_token.observe(std::chrono::duration<double>(now - start).count());
        } else {
          m.time_per_output_token.observe(std::chrono::duration<double>(now - last[i]).count() / got.size());
        }
        ++m.generation_tokens;
        merge(delta, streams[i].push(t));
      }
      if (!got.empty()) last[i] = now;
      const bool stopped = streams[i].stopped();
      if (stopped) handles[i]->cancel();
      if (stopped || !alive) {
        const FinishReason reason = handles[i]->finish_reason();
        if (!stopped && reason == FinishReason::kError) {
          cancel_all();
          m.count_finish("error");
          const bool nf = handles[i]->error_non_finite();
          throw ApiError(500, "server_error",
                         str_cat("generation failed for choice ", i, ": ", handles[i]->error()), {},
                         nf ? "non_finite_logits" : "generation_failed");
        }
        merge(delta, streams[i].finish());
        const std::string finish = finish_name(reason, stopped, streams[i].has_tool_calls());
        m.count_finish(finish);
        done[i] = true;
        --remaining;
        if (!emit(i, delta, finish)) {
          cancel_all();
          return false;
        }
      } else if (!delta.empty() && !emit(i, delta, "")) {
        cancel_all();
        m.count_finish("cancelled", static_cast<int64_t>(remaining));
        return false;
      }
    }
  }
  return true;
}

Json Service::Job::State::delta_json(size_t i, ChoiceDelta& d, bool first) {
  const auto& tok = *service->tokenizer_;
  if (!chat) {
    Json lp = nullptr;
    if (logprobs) lp = completion_logprobs(tok, d.logprobs, *logprobs, text_offsets[i]);
    return Json{{"index", i}, {"text", (first ? echo_text : std::string()) + d.text}, {"logprobs", lp}, {"finish_reason", nullptr}};
  }
  Json delta = Json::object();
  if (first) delta["role"] = "assistant";
  if (!d.chat.reasoning_content.empty()) delta["reasoning_content"] = d.chat.reasoning_content;
  if (!d.chat.content.empty() || first) delta["content"] = d.chat.content;
  if (!d.chat.tool_calls.empty()) {
    Json calls = Json::array();
    for (auto& [index, call] : d.chat.tool_calls) calls.push_back(tool_call_json(index, call));
    delta["tool_calls"] = calls;
  }
  Json lp = nullptr;
  if (logprobs) lp = Json{{"content", chat_logprobs(tok, d.logprobs, *logprobs)}};
  return Json{{"index", i}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", nullptr}};
}

bool Service::Job::stream() const { return s_->stream; }

Service::Job::~Job() {
  if (s_) s_->cancel_all();
}

std::string Service::Job::run() {
  State& s = *s_;
  const size_t n = s.handles.size();
  std::vector<ChoiceDelta> all(n);
  std::vector<std::string> finish(n);
  s.drive([&](size_t i, ChoiceDelta& d, const std::string& f) {
    merge(all[i], std::move(d));
    if (!f.empty()) finish[i] = f;
    return true;
  });
  const auto& tok = *s.service->tokenizer_;
  Json choices = Json::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < n; ++i) {
    completion_tokens += s.streams[i].tokens();
    ChoiceDelta& d = all[i];
    if (!s.chat) {
      Json lp = nullptr;
      if (s.logprobs) lp = completion_logprobs(tok, d.logprobs, *s.logprobs, s.text_offsets[i]);
      choices.push_back(Json{{"index", i}, {"text", s.echo_text + d.text}, {"logprobs", lp}, {"finish_reason", finish[i]}});
      continue;
    }
    Json message{{"role", "assistant"}};
    message["content"] = d.chat.content.empty() && !d.chat.tool_calls.empty() ? Json(nullptr) : Json(d.chat.content);
    if (!d.chat.reasoning_content.empty()) message["reasoning_content"] = d.chat.reasoning_content;
    if (!d.chat.tool_calls.empty()) {
      Json calls = Json::array();
      for (auto& [index, call] : d.chat.tool_calls) {
        Json c = tool_call_json(index, call);
        c.erase("index");
        calls.push_back(c);
      }
      message["tool_calls"] = calls;
    }
    Json lp = nullptr;
    if (s.logprobs) lp = Json{{"content", chat_logprobs(tok, d.logprobs, *s.logprobs)}};
    choices.push_back(Json{{"index", i}, {"message", message}, {"logprobs", lp}, {"finish_reason", finish[i]}});
  }
  return dump_json(Json{{"id", s.id},
                        {"object", s.chat ? "chat.completion" : "text_completion"},
                        {"created", s.created},
                        {"model", s.service->model_name()},
                        {"choices", choices},
                        {"usage", usage_json(s.prompt_tokens, completion_tokens)}});
}

void Service::Job::run_stream(const ChunkWriter& write) {
  State& s = *s_;
  const size_t n = s.handles.size();
  std::vector<bool> started(n, false);
  auto send = [&](Json choice) {
    Json chunk = s.chunk_base();
    chunk["choices"] = Json::array({std::move(choice)});
    if (s.include_usage) chunk["usage"] = nullptr;
    return write(sse_event(chunk));
  };
  try {
    if (s.chat) {  // the role arrives first, as OpenAI sends it
      for (size_t i = 0; i < n; ++i) {
        ChoiceDelta empty;
        started[i] = true;
        if (!send(s.delta_json(i, empty, true))) return s.cancel_all();
      }
    }
    const bool completed = s.drive([&](size_t i, ChoiceDelta& d, const std::string& f) {
      const bool first = !started[i];
      started[i] = true;
      const bool visible = !d.text.empty() || !d.chat.empty() || (s.logprobs && !d.logprobs.empty());
      if (visible || first) {
        Json c = s.delta_json(i, d, first);
        if (!f.empty() && !s.chat) c["finish_reason"] = f;
        if (!send(c)) return false;
        if (!f.empty() && !s.chat) return true;
      }
      if (f.empty()) return true;
      Json c = s.chat ? Json{{"index", i}, {"delta", Json::object()}, {"logprobs", nullptr}, {"finish_reason", f}}
                      : Json{{"index", i}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", f}};
      return send(c);
    });
    if (!completed) return;
    if (s.include_usage) {
      int64_t completion_tokens = 0;
      for (auto& st : s.streams) completion_tokens += st.tokens();
      Json chunk = s.chunk_base();
      chunk["choices"] = Json::array();
      chunk["usage"] = usage_json(s.prompt_tokens, completion_tokens);
      if (!write(sse_event(chunk))) return;
    }
  } catch (...) {
    const ApiError e = to_api_error(std::current_exception());
    s.cancel_all();
    if (!write("data: " + error_body(e) + "\n\n")) return;
  }
  write(kSseDone);
}

Service::~Service() { scheduler_.reset(); }

void Service::load() {
  try {
    // The backend first (a missing device fails before the model is read), then the model,
    // placed in the backend's memory unless that is the host's.
    std::unique_ptr<ops::Backend> backend =
        options_.make_backend ? options_.make_backend() : ops::make_cpu_backend(options_.threads);
    auto model = model::deepseek_v4::Model::load(options_.model_dir);
    auto tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load(options_.model_dir));
    const auto& cfg = model->config();
    if (tok->vocab_size() > cfg.vocab_size)
      throw Error(str_cat(options_.model_dir.string(), ": tokenizer has ", tok->vocab_size(), " ids but config.json vocab_size is ",
                          cfg.vocab_size));
    context_length_ = options_.context_length > 0 ? options_.context_length
                                                  : std::min<int64_t>(cfg.max_position_embeddings, 16384);
    created_ = static_cast<int64_t>(std::time(nullptr));
    if (backend->device() != Device::kCpu) model->place(*backend);
    runtime::SchedulerOptions scheduler = options_.scheduler;
    if (options_.make_explainer) scheduler.explain_non_finite = options_.make_explainer(*model, *backend);
    backend_ = std::move(backend);
    scheduler_ = std::make_unique<runtime::Scheduler>(*model, std::make_unique<LentBackend>(*backend_), scheduler);
    model_ = std::move(model);
    tokenizer_ = std::move(tok);
    ready_ = true;
  } catch (const std::exception& e) {
    std::lock_guard lock(mu_);
    load_error_ = e.what();
    throw;
  }
}

std::string Service::load_error() const {
  std::lock_guard lock(mu_);
  return load_error_;
}

std::string Service::models_json() const {
  Json m{{"id", options_.model_name}, {"object", "model"}, {"created", created_}, {"owned_by", "clawmine"},
         {"max_model_len", context_length_}};
  return dump_json(Json{{"object", "list"}, {"data", Json::array({m})}});
}

std::string Service::metrics_text() const {
  return metrics_.render(scheduler_ && ready_ ? scheduler_->stats() : runtime::SchedulerStats{}, ready_);
}

void Service::check_model(const std::string& requested) const {
  if (!requested.empty() && requested != options_.model_name)
    throw ApiError(404, "invalid_request_error",
                   str_cat("The model '", requested, "' does not exist; this server serves '", options_.model_name, "'"),
                   "model", "model_not_found");
}

namespace {

std::vector<int32_t> encode_chat(const tokenizer::Tokenizer& tok, const ChatRequest& r) {
  std::string text;
  try {
    text = tokenizer::encode_messages(r.messages, r.encode);
  } catch (const Error& e) {
    throw invalid_request(e.what(), "messages");
  }
  return tok.encode(text, false);
}

}  // namespace

std::string Service::tokenize(std::string_view body) const {
  const TokenizeRequest r = parse_tokenize_request(body);
  std::vector<int32_t> ids = r.chat ? encode_chat(*tokenizer_, *r.chat) : tokenizer_->encode(*r.text, r.add_special_tokens);
  return dump_json(Json{{"tokens", ids}, {"count", ids.size()}, {"max_model_len", context_length_}});
}

std::string Service::detokenize(std::string_view body) const {
  const DetokenizeRequest r = parse_detokenize_request(body);
  for (size_t i = 0; i < r.tokens.size(); ++i)
    if (r.tokens[i] >= tokenizer_->vocab_size())
      throw invalid_request(str_cat("'tokens[", i, "]' = ", r.tokens[i], " is outside the vocabulary [0, ", tokenizer_->vocab_size(), ")"),
                            str_cat("tokens[", i, "]"));
  return dump_json(Json{{"prompt", tokenizer_->decode(r.tokens)}});
}

std::shared_ptr<Service::Job> Service::start_chat(std::string_view body) {
  const ChatRequest r = parse_chat_request(body);
  check_model(r.gen.model);
  return start(r.gen, encode_chat(*tokenizer_, r), true, r.encode.thinking, {}, "messages");
}

std::shared_ptr<Service::Job> Service::start_completion(std::string_view body) {
  const CompletionRequest r = parse_completion_request(body);
  check_model(r.gen.model);
  std::vector<int32_t> ids = r.prompt_text ? tokenizer_->encode(*r.prompt_text, true) : r.prompt_ids;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= tokenizer_->vocab_size())
      throw invalid_request(str_cat("'prompt[", i, "]' = ", ids[i], " is outside the vocabulary [0, ", tokenizer_->vocab_size(), ")"),
                            str_cat("prompt[", i, "]"));
  if (ids.empty()) throw invalid_request("'prompt' encodes to no tokens", "prompt");
  GenerationFields gen = r.gen;
  if (!gen.max_tokens) gen.max_tokens = 16;  // the completions API default
  std::string echo = r.echo ? (r.prompt_text ? *r.prompt_text : tokenizer_->decode(ids)) : std::string();
  return start(gen, std::move(ids), false, false, echo, "prompt");
}

std::shared_ptr<Service::Job> Service::start(const GenerationFields& gen, std::vector<int32_t> prompt, bool chat,
                                             bool thinking, const std::string& echo_text, const char* prompt_param) {
  const int64_t P = static_cast<int64_t>(prompt.size());
  if (P >= context_length_)
    throw invalid_request(str_cat("This model's maximum context length is ", context_length_, " tokens, but the prompt has ", P,
                                  " tokens"), prompt_param, "context_length_exceeded");
  const int64_t max_tokens = gen.max_tokens.value_or(context_length_ - P);
  if (P + max_tokens > context_length_)
    throw invalid_request(str_cat("'max_tokens' is too large: ", max_tokens, ". This model's maximum context length is ",
                                  context_length_, " tokens and the prompt has ", P, " tokens (at most ", context_length_ - P,
                                  " can be generated)"), "max_tokens", "context_length_exceeded");
  uint64_t seed = gen.sampling.seed;
  if (!gen.seed_given) seed = std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}();
  std::vector<runtime::SequenceRequest> reqs;
  for (int64_t i = 0; i < gen.n; ++i) {
    runtime::SequenceRequest q;
    q.prompt = prompt;
    q.max_tokens = max_tokens;
    q.sampling = gen.sampling;
    q.ignore_eos = gen.ignore_eos;
    q.sampling.seed = seed + static_cast<uint64_t>(i);
    q.top_logprobs = gen.logprobs.value_or(0);
    q.logprobs = gen.logprobs.has_value();
    reqs.push_back(std::move(q));
  }
  auto job = std::shared_ptr<Job>(new Job);
  job->s_ = std::make_unique<Job::State>();
  Job::State& s = *job->s_;
  s.service = this;
  s.chat = chat;
  s.stream = gen.stream;
  s.id = random_id(chat ? "chatcmpl" : "cmpl");
  s.created = static_cast<int64_t>(std::time(nullptr));
  s.prompt_tokens = P;
  s.logprobs = gen.logprobs;
  s.include_usage = gen.include_usage;
  s.echo_text = echo_text;
  s.start = Clock::now();
  for (int64_t i = 0; i < gen.n; ++i) {
    s.streams.emplace_back(*tokenizer_, chat, thinking, gen.stop, model_->config().eos_token_id);
    s.text_offsets.push_back(static_cast<int64_t>(echo_text.size()));
  }
  s.handles = scheduler_->submit(std::move(reqs));
  metrics_.prompt_tokens += P;
  return job;
}

}  // namespace clawmine::server
