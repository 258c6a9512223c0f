// Continuous batching for the server: one scheduler thread owns the model and the backend; each
// step it admits waiting sequences (up to max_running) and advances every running sequence by one
// forward (a prefill chunk or one decode token), each with its own SequenceCache; with
// batch_decode, the sequences past their prompt take their decode token together, in one
// Model::forward_batch. Requests join and leave between steps. Consumers read tokens from a
// SequenceHandle and may cancel it.
// A logit row with NaN/Inf fails only its sequence and counts a non-finite guard trip.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "model/deepseek_v4/model.h"
#include "ops/backend.h"
#include "runtime/non_finite_hook.h"
#include "runtime/sampler.h"

namespace clawmine::runtime {

struct SchedulerOptions {
  int64_t max_running = 64;     // sequences advanced per step
  int64_t max_waiting = 256;    // admitted but not yet running; beyond it submit() throws QueueFull
  int64_t prefill_chunk = 256;  // prompt tokens per sequence per step
  // Decode every running sequence past its prompt in one batched forward per step (the weights
  // read once for all of them; `clawmine serve` turns it on unless --batch-decode off). Off: one
  // forward per sequence. On the CPU a sequence's logits are the same bits either way; on CUDA they
  // agree to rounding (docs/ARCHITECTURE.md).
  bool batch_decode = false;
  // Threads that draw a batched step's tokens from its logit rows (each sequence's sampler is its
  // own, so the draws are independent; 0: the machine's cores, at most 16). A draw over the V4
  // vocabulary costs ~1.5-3 ms on the host (docs/PERFORMANCE.md, Sampler), 32 of them more than
  // the GPU step.
  int sample_threads = 0;
  model::deepseek_v4::ForwardOptions forward;
  // Runs on the scheduler thread when the guard trips; its text joins the request's error.
  NonFiniteExplainer explain_non_finite;
};

struct SequenceRequest {
  std::vector<int32_t> prompt;  // non-empty, ids < vocab
  int64_t max_tokens = 16;      // >= 1
  SamplingParams sampling;
  int64_t top_logprobs = 0;     // entries of the sampled distribution returned per token
  // false: the caller reads no logprob of the sampled token (OpenAI requests without
  // `logprobs`); a greedy sequence without penalties then takes its token on the backend
  // (Model::forward_greedy: no logits to the host) and its tokens carry logprob 0.
  bool logprobs = true;
  bool ignore_eos = false;      // an EOS token does not finish the sequence (benchmarks: max_tokens each)
};

enum class FinishReason { kNone, kEos, kLength, kCancelled, kError };

class QueueFull : public Error {
 public:
  using Error::Error;
};

class SequenceHandle {
 public:
  // Moves the tokens produced so far into `out`, waiting up to `timeout` when there are none.
  // Returns false once the sequence has finished and every token has been taken.
  bool take(std::vector<SampledToken>& out, std::chrono::milliseconds timeout);
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  FinishReason finish_reason() const;
  std::string error() const;                  // kError: what went wrong
  bool error_non_finite() const;              // kError caused by the non-finite guard

 private:
  friend class Scheduler;
  void push(SampledToken token);
  void finish(FinishReason reason, std::string error = {}, bool non_finite = false);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SampledToken> tokens_;
  FinishReason reason_ = FinishReason::kNone;
  std::string error_;
  bool non_finite_ = false;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t steps = 0;
  int64_t forwards = 0;
  int64_t non_finite_trips = 0;
};

class Scheduler {
 public:
  Scheduler(const model::deepseek_v4::Model& model, std::unique_ptr<ops::Backend> backend, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues all requests or none (QueueFull when the waiting queue cannot take them all).
  std::vector<std::shared_ptr<SequenceHandle>> submit(std::vector<SequenceRequest> requests);
  SchedulerStats stats() const;

 private:
  struct Sequence;
  void loop();
  void step(Sequence& seq);
  void decode_together(const std::vector<Sequence*>& seqs);
  SampledToken draw(Sequence& seq, const float* logits_row);
  void emit_greedy(Sequence& seq, const model::deepseek_v4::GreedyToken& g);
  void push_token(Sequence& seq, SampledToken token);
  void fail(Sequence& seq, const std::exception& e, bool non_finite);
  template <typename F>
  void guarded(Sequence& seq, F&& f);
  std::string explain_non_finite(const Sequence& seq) const;  // options_.explain_non_finite, "" if unset

  const model::deepseek_v4::Model& model_;
  std::unique_ptr<ops::Backend> backend_;
  SchedulerOptions options_;
  std::unique_ptr<ThreadPool> sample_pool_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::atomic<int64_t> running_count_{0}, steps_{0}, forwards_{0}, non_finite_trips_{0};
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace clawmine::runtime
