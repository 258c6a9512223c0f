// ThreadPool: workers sleep on a condition variable and wake per parallel_for generation; the
// caller runs chunk 0 itself. Chunk c covers [begin + c*n/chunks, begin + (c+1)*n/chunks).
#include "core/thread_pool.h"

#include <algorithm>

namespace clawmine {
namespace {
thread_local bool t_inside_pool_chunk = false;
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads_ = num_threads;
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::run_chunk(int chunk_index) {
  const int64_t n = job_end_ - job_begin_;
  const int64_t b = job_begin_ + n * chunk_index / job_chunks_;
  const int64_t e = job_begin_ + n * (chunk_index + 1) / job_chunks_;
  if (b >= e) return;
  t_inside_pool_chunk = true;
  try {
    (*job_fn_)(b, e);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!job_error_) job_error_ = std::current_exception();
  }
  t_inside_pool_chunk = false;
}

void ThreadPool::worker_loop(int worker_index) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    if (worker_index < job_chunks_) run_chunk(worker_index);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) work_done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& fn) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  if (num_threads_ == 1 || n == 1 || t_inside_pool_chunk) {
    fn(begin, end);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_fn_ = &fn;
    job_begin_ = begin;
    job_end_ = end;
    job_chunks_ = static_cast<int>(std::min<int64_t>(n, num_threads_));
    job_error_ = nullptr;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  work_ready_.notify_all();
  run_chunk(0);
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    work_done_.wait(lock, [&] { return pending_ == 0; });
    error = job_error_;
    job_fn_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace clawmine
