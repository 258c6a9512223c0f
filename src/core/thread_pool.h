// A small fixed pool of worker threads with one primitive, parallel_for. A range is split into
// at most num_threads() contiguous chunks, one per thread, and each index is handled by exactly
// one call of fn; callers that compute every output element inside one index (with a fixed
// summation order) therefore get bit-identical results for any thread count.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace clawmine {

class ThreadPool {
 public:
  // num_threads counts the calling thread; 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(chunk_begin, chunk_end) over disjoint chunks covering [begin, end) and returns when
  // all are done. The first exception thrown by any chunk is rethrown here. A call made from
  // inside a chunk (nested) runs serially on the calling thread.
  void parallel_for(int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop(int worker_index);
  void run_chunk(int chunk_index);

  int num_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
  // The job of the current generation.
  const std::function<void(int64_t, int64_t)>* job_fn_ = nullptr;
  int64_t job_begin_ = 0, job_end_ = 0;
  int job_chunks_ = 0;
  std::exception_ptr job_error_;
};

}  // namespace clawmine
