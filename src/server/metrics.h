// Server metrics in Prometheus text format: HTTP requests by route and status, tokens in and
// out, finished choices by finish_reason, queue depth and running sequences, time-to-first-token
// and per-output-token histograms, non-finite guard trips. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/scheduler.h"

namespace clawmine::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket (not cumulative); last is +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void count_http(const std::string& route, int status);
  void count_finish(const std::string& reason, int64_t n = 1);
  std::atomic<int64_t> prompt_tokens{0}, generation_tokens{0};
  Histogram time_to_first_token, time_per_output_token;

  std::string render(const runtime::SchedulerStats& scheduler, bool loaded) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> http_;
  std::map<std::string, int64_t> finish_;
};

}  // namespace clawmine::server
