// Host time of one Sampler::sample over a V4 vocabulary (129280 logits, normal(0, 3), the same
// row every iteration) for the request shapes a server sees: greedy with logprobs, the OpenAI
// default (temperature 1, no cuts), nucleus, top-k, and logprobs with five alternatives. The
// server's scheduler thread pays this per sampled sequence and decode step (greedy requests
// without logprobs take their token on the GPU instead). Run: build/bench/sampler_bench
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "runtime/sampler.h"

namespace {

using clawmine::runtime::Sampler;
using clawmine::runtime::SamplingParams;

std::vector<float> normal_row(float sd) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(129280);
  for (float& x : v) x = normal(rng);
  return v;
}
const std::vector<float>& row(bool flat) {
  static const std::vector<float> peaked = normal_row(3.0f), near_flat = normal_row(0.5f);
  return flat ? near_flat : peaked;
}

void run(benchmark::State& state, SamplingParams p, int64_t n_top, bool flat = false) {
  const std::vector<float>& z = row(flat);
  Sampler s(p);
  for (auto _ : state) benchmark::DoNotOptimize(s.sample(z.data(), static_cast<int64_t>(z.size()), n_top));
}

void BM_GreedyWithLogprobs(benchmark::State& state) { run(state, {.temperature = 0.0f}, 0); }
void BM_Temperature1(benchmark::State& state) { run(state, {.temperature = 1.0f}, 0); }
void BM_TopP095(benchmark::State& state) { run(state, {.temperature = 0.7f, .top_p = 0.95f}, 0); }
void BM_TopK50(benchmark::State& state) { run(state, {.temperature = 0.7f, .top_k = 50}, 0); }
void BM_Temperature1Top5(benchmark::State& state) { run(state, {.temperature = 1.0f}, 5); }
// Near-flat rows (normal(0, 0.5)), like a random-weight model's: top_p 0.95 keeps most of the vocabulary.
void BM_TopP095Flat(benchmark::State& state) { run(state, {.temperature = 0.7f, .top_p = 0.95f}, 0, true); }
void BM_Temperature1Flat(benchmark::State& state) { run(state, {.temperature = 1.0f}, 0, true); }

BENCHMARK(BM_GreedyWithLogprobs)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Temperature1)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TopP095)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TopK50)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Temperature1Top5)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TopP095Flat)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Temperature1Flat)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
