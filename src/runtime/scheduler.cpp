#include "runtime/scheduler.h"

#include <algorithm>
#include <exception>

#include "runtime/generate.h"

namespace clawmine::runtime {

using model::deepseek_v4::SequenceCache;

void SequenceHandle::push(SampledToken token) {
  {
    std::lock_guard lock(mu_);
    tokens_.push_back(std::move(token));
  }
  cv_.notify_all();
}

void SequenceHandle::finish(FinishReason reason, std::string error, bool non_finite) {
  {
    std::lock_guard lock(mu_);
    reason_ = reason;
    error_ = std::move(error);
    non_finite_ = non_finite;
  }
  cv_.notify_all();
}

bool SequenceHandle::take(std::vector<SampledToken>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !tokens_.empty() || reason_ != FinishReason::kNone; });
  while (!tokens_.empty()) {
    out.push_back(std::move(tokens_.front()));
    tokens_.pop_front();
  }
  return reason_ == FinishReason::kNone || !out.empty();
}

FinishReason SequenceHandle::finish_reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

std::string SequenceHandle::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

bool SequenceHandle::error_non_finite() const {
  std::lock_guard lock(mu_);
  return non_finite_;
}

struct Scheduler::Sequence {
  SequenceRequest request;
  std::shared_ptr<SequenceHandle> handle;
  Sampler sampler;
  SequenceCache cache;
  size_t prefilled = 0;
  int64_t generated = 0;
  std::vector<int32_t> generated_ids{};  // fed back after the prompt (for the guard's explainer)
  int32_t last = -1;
  bool done = false;
  // Greedy, no penalties, no logprobs wanted: the argmax runs on the backend (forward_greedy).
  bool on_backend() const {
    return !request.logprobs && request.top_logprobs == 0 && greedy_without_penalties(request.sampling);
  }
};

Scheduler::Scheduler(const model::deepseek_v4::Model& model, std::unique_ptr<ops::Backend> backend,
                     SchedulerOptions options)
    : model_(model), backend_(std::move(backend)), options_(options) {
  CLAWMINE_CHECK(options_.max_running >= 1 && options_.max_waiting >= 1 && options_.prefill_chunk >= 1,
                 "scheduler limits must be >= 1");
  CLAWMINE_CHECK(options_.sample_threads >= 0, "sample_threads must be >= 0, got ", options_.sample_threads);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  sample_pool_ = std::make_unique<ThreadPool>(options_.sample_threads > 0 ? options_.sample_threads
                                                                          : std::min(cores, 16));
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  for (auto& s : waiting_) s->handle->finish(FinishReason::kCancelled);
  for (auto& s : running_) s->handle->finish(FinishReason::kCancelled);
}

std::vector<std::shared_ptr<SequenceHandle>> Scheduler::submit(std::vector<SequenceRequest> requests) {
  const int64_t vocab = model_.config().vocab_size;
  for (const auto& r : requests) {
    CLAWMINE_CHECK(!r.prompt.empty(), "a sequence needs at least one prompt token");
    CLAWMINE_CHECK(r.max_tokens >= 1, "max_tokens must be >= 1");
    for (int32_t id : r.prompt) CLAWMINE_CHECK(id >= 0 && id < vocab, "prompt token id ", id, " outside [0, ", vocab, ")");
  }
  std::vector<std::unique_ptr<Sequence>> seqs;
  std::vector<std::shared_ptr<SequenceHandle>> handles;
  for (auto& r : requests) {
    auto handle = std::make_shared<SequenceHandle>();
    Sampler sampler(r.sampling);
    seqs.push_back(std::unique_ptr<Sequence>(new Sequence{std::move(r), handle, std::move(sampler), model_.new_cache()}));
    handles.push_back(std::move(handle));
  }
  {
    std::lock_guard lock(mu_);
    if (static_cast<int64_t>(waiting_.size() + seqs.size()) > options_.max_waiting)
      throw QueueFull(str_cat("the request queue is full (", waiting_.size(), " waiting, limit ", options_.max_waiting,
                              "); retry later"));
    for (auto& s : seqs) waiting_.push_back(std::move(s));
  }
  cv_.notify_all();
  return handles;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lock(mu_);
    s.waiting = static_cast<int64_t>(waiting_.size());
  }
  s.running = running_count_;
  s.steps = steps_;
  s.forwards = forwards_;
  s.non_finite_trips = non_finite_trips_;
  return s;
}

std::string Scheduler::explain_non_finite(const Sequence& seq) const {
  if (!options_.explain_non_finite) return {};
  try {
    return options_.explain_non_finite(seq.request.prompt, seq.generated_ids);
  } catch (const std::exception& e) {
    return {};
  }
}

void Scheduler::step(Sequence& seq) {
  const auto& prompt = seq.request.prompt;
  std::vector<int32_t> ids;
  if (seq.prefilled < prompt.size()) {
    const size_t n = std::min(prompt.size() - seq.prefilled, static_cast<size_t>(options_.prefill_chunk));
    ids.assign(prompt.begin() + static_cast<std::ptrdiff_t>(seq.prefilled),
               prompt.begin() + static_cast<std::ptrdiff_t>(seq.prefilled + n));
    seq.prefilled += n;
  } else {
    ids = {seq.last};
  }
  // Only the last position is sampled (no prompt logprobs): the head runs for that row alone.
  model::deepseek_v4::ForwardOptions forward = options_.forward;
  forward.all_logits = false;
  if (seq.on_backend() && seq.prefilled == prompt.size()) {  // sampled: the token alone comes back
    const model::deepseek_v4::GreedyToken g = model_.forward_greedy(*backend_, seq.cache, ids, forward);
    ++forwards_;
    emit_greedy(seq, g);
    return;
  }
  const Buffer logits = model_.forward(*backend_, seq.cache, ids, forward);
  ++forwards_;
  if (seq.prefilled < prompt.size()) return;  // more prompt to go
  push_token(seq, draw(seq, logits.f32() + (logits.view().dim(0) - 1) * model_.config().vocab_size));
}

// The decode token of every sequence in seqs (each past its prompt) from one batched forward.
void Scheduler::decode_together(const std::vector<Sequence*>& seqs) {
  std::vector<model::deepseek_v4::SequenceCache*> caches;
  std::vector<int32_t> ids;
  for (Sequence* s : seqs) {
    caches.push_back(&s->cache);
    ids.push_back(s->last);
  }
  // Every sequence greedy without logprobs: the tokens alone come back.
  if (std::all_of(seqs.begin(), seqs.end(), [](const Sequence* s) { return s->on_backend(); })) {
    const std::vector<model::deepseek_v4::GreedyToken> g =
        model_.forward_batch_greedy(*backend_, caches, ids, options_.forward);
    ++forwards_;
    for (size_t i = 0; i < seqs.size(); ++i) guarded(*seqs[i], [&] { emit_greedy(*seqs[i], g[i]); });
    return;
  }
  const Buffer logits = model_.forward_batch(*backend_, caches, ids, options_.forward);
  ++forwards_;
  // The draws in parallel (each touches its own sequence's sampler only), handed over in order.
  const int64_t V = model_.config().vocab_size, n = static_cast<int64_t>(seqs.size());
  std::vector<SampledToken> tokens(seqs.size());
  std::vector<std::exception_ptr> errors(seqs.size());
  sample_pool_->parallel_for(0, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      try {
        tokens[static_cast<size_t>(i)] = draw(*seqs[static_cast<size_t>(i)], logits.f32() + i * V);
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    }
  });
  for (size_t i = 0; i < seqs.size(); ++i)
    guarded(*seqs[i], [&] {
      if (errors[i]) std::rethrow_exception(errors[i]);
      push_token(*seqs[i], std::move(tokens[i]));
    });
}

// Runs f for the sequence; an exception fails only this sequence (fail()).
template <typename F>
void Scheduler::guarded(Sequence& seq, F&& f) {
  try {
    f();
  } catch (const NonFiniteLogits& e) {
    fail(seq, e, true);
  } catch (const std::exception& e) {
    fail(seq, e, false);
  }
}

// The sequence's next token from its logit row: the sampler's draw, or for a greedy sequence that
// wants no logprobs (in a batch that took the logits) the first maximum, refused on NaN/Inf as
// the sampler refuses.
SampledToken Scheduler::draw(Sequence& seq, const float* row) {
  const int64_t V = model_.config().vocab_size;
  if (!seq.on_backend()) return seq.sampler.sample(row, V, seq.request.top_logprobs);
  if (const int64_t bad = first_non_finite(row, V); bad >= 0) throw non_finite_logits(bad, row[bad]);
  SampledToken token;
  token.id = argmax(row, V);
  return token;
}

// The token the backend took (forward_greedy; a non-finite row throws as the sampler does).
void Scheduler::emit_greedy(Sequence& seq, const model::deepseek_v4::GreedyToken& g) {
  SampledToken token;
  token.id = greedy_id(g);
  push_token(seq, std::move(token));
}

// Hands the sequence's next token to the consumer and finishes it at EOS or max_tokens.
void Scheduler::push_token(Sequence& seq, SampledToken token) {
  seq.last = token.id;
  seq.generated_ids.push_back(token.id);
  ++seq.generated;
  const bool eos = token.id == model_.config().eos_token_id && !seq.request.ignore_eos;
  seq.handle->push(std::move(token));
  if (eos) {
    seq.handle->finish(FinishReason::kEos);
    seq.done = true;
  } else if (seq.generated >= seq.request.max_tokens) {
    seq.handle->finish(FinishReason::kLength);
    seq.done = true;
  }
}

// Finishes the sequence with the error; non_finite: the guard tripped on its logits. Otherwise a
// backend op that refused its input failed the forward, and the explainer tells whether the
// sequence went non-finite, which makes this a guard trip too.
void Scheduler::fail(Sequence& seq, const std::exception& e, bool non_finite) {
  const std::string why = explain_non_finite(seq);
  if (non_finite || !why.empty()) ++non_finite_trips_;
  seq.handle->finish(FinishReason::kError, why.empty() ? e.what() : str_cat(e.what(), "; ", why),
                     non_finite || !why.empty());
  seq.done = true;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || !running_.empty(); });
      if (stop_) return;
      while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
        running_.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
      running_count_ = static_cast<int64_t>(running_.size());
    }
    std::vector<Sequence*> decoding;  // batch_decode: past their prompt, decoded together below
    for (auto& seq : running_) {
      if (seq->handle->cancelled()) {
        seq->handle->finish(FinishReason::kCancelled);
        seq->done = true;
        continue;
      }
      if (options_.batch_decode && seq->prefilled == seq->request.prompt.size()) {
        decoding.push_back(seq.get());
      } else {
        guarded(*seq, [&] { step(*seq); });
      }
    }
    if (decoding.size() == 1) {
      guarded(*decoding[0], [&] { step(*decoding[0]); });
    } else if (!decoding.empty()) {
      try {
        decode_together(decoding);
      } catch (const std::exception& e) {
        // The batched forward failed as a whole (a backend op refused, memory ran out): every
        // sequence of it fails, each with its own explanation (a caught NonFiniteLogits never
        // reaches here: sampling failures stay with their sequence).
        for (Sequence* s : decoding) fail(*s, e, false);
      }
    }
    std::erase_if(running_, [](const auto& s) { return s->done; });
    running_count_ = static_cast<int64_t>(running_.size());
    ++steps_;
  }
}

}  // namespace clawmine::runtime
