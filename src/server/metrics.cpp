#include "server/metrics.h"

#include <algorithm>

#include "core/error.h"

namespace clawmine::server {

void Histogram::observe(double v) {
  std::lock_guard lock(mu_);
  const auto i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  ++counts_[static_cast<size_t>(i)];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard lock(mu_);
  out += str_cat("# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  int64_t acc = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    acc += counts_[i];
    out += str_cat(name, "_bucket{le=\"", bounds_[i], "\"} ", acc, "\n");
  }
  acc += counts_.back();
  out += str_cat(name, "_bucket{le=\"+Inf\"} ", acc, "\n", name, "_sum ", sum_, "\n", name, "_count ", count_, "\n");
}

Metrics::Metrics()
    : time_to_first_token({0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      time_per_output_token({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}) {}

void Metrics::count_http(const std::string& route, int status) {
  std::lock_guard lock(mu_);
  ++http_[{route, status}];
}

void Metrics::count_finish(const std::string& reason, int64_t n) {
  std::lock_guard lock(mu_);
  finish_[reason] += n;
}

std::string Metrics::render(const runtime::SchedulerStats& s, bool loaded) const {
  std::string out;
  {
    std::lock_guard lock(mu_);
    out += "# HELP clawmine_http_requests_total HTTP requests answered, by route and status.\n"
           "# TYPE clawmine_http_requests_total counter\n";
    for (const auto& [key, n] : http_)
      out += str_cat("clawmine_http_requests_total{route=\"", key.first, "\",status=\"", key.second, "\"} ", n, "\n");
    out += "# HELP clawmine_choices_finished_total Completion choices finished, by finish_reason.\n"
           "# TYPE clawmine_choices_finished_total counter\n";
    for (const auto& [reason, n] : finish_)
      out += str_cat("clawmine_choices_finished_total{finish_reason=\"", reason, "\"} ", n, "\n");
  }
  out += str_cat("# HELP clawmine_prompt_tokens_total Prompt tokens admitted.\n# TYPE clawmine_prompt_tokens_total counter\n",
                 "clawmine_prompt_tokens_total ", prompt_tokens.load(), "\n");
  out += str_cat("# HELP clawmine_generation_tokens_total Tokens generated.\n# TYPE clawmine_generation_tokens_total counter\n",
                 "clawmine_generation_tokens_total ", generation_tokens.load(), "\n");
  out += str_cat("# HELP clawmine_queue_depth Sequences waiting to run.\n# TYPE clawmine_queue_depth gauge\n",
                 "clawmine_queue_depth ", s.waiting, "\n");
  out += str_cat("# HELP clawmine_running_sequences Sequences being decoded.\n# TYPE clawmine_running_sequences gauge\n",
                 "clawmine_running_sequences ", s.running, "\n");
  out += str_cat("# HELP clawmine_scheduler_steps_total Scheduler steps.\n# TYPE clawmine_scheduler_steps_total counter\n",
                 "clawmine_scheduler_steps_total ", s.steps, "\n");
  out += str_cat("# HELP clawmine_nonfinite_guard_trips_total Logit rows with NaN/Inf that failed their request.\n",
                 "# TYPE clawmine_nonfinite_guard_trips_total counter\n", "clawmine_nonfinite_guard_trips_total ",
                 s.non_finite_trips, "\n");
  out += str_cat("# HELP clawmine_model_loaded 1 once the model is ready.\n# TYPE clawmine_model_loaded gauge\n",
                 "clawmine_model_loaded ", loaded ? 1 : 0, "\n");
  time_to_first_token.render(out, "clawmine_time_to_first_token_seconds", "Time from request to its first token.");
  time_per_output_token.render(out, "clawmine_time_per_output_token_seconds", "Time between output tokens.");
  return out;
}

}  // namespace clawmine::server
