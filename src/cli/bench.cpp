// `clawmine bench`: the end-to-end speed a user gets from a model on a backend, next to the
// floors measured on the same card in the same run (docs/PERFORMANCE.md):
//   decode   ms/token at batch 1 (CUDA graphs as configured), against bytes-per-token / copy
//            bandwidth, the bytes being every weight one token reads (routed experts: top-k of E;
//            embedding: one row);
//   prefill  tokens/s and time to first token at each prompt length (after one untimed prefill at
//            that length), against the model's matmul
//            flops over the measured BF16 GEMM rate;
//   batch B  B sequences stepped round-robin, one forward per sequence (the median round after
//            one untimed round, in which each sequence records its step graph), then the same
//            sequences decoded by one Model::forward_batch per step (row-wise work over the B
//            rows, attention per sequence; an untimed step first records its graph);
//   profile  (--profile) op-by-op time of one prefill and of decode steps (and of the largest
//            batch's batched steps), run eagerly.
//   sampled  (--sampled-tokens, default 32) the batch-1 sequence continues with its logits
//            downloaded and drawn on the host at temperature 0.7, top_p 0.95 (runtime::Sampler),
//            as the server serves every request but greedy without logprobs; the draw's time apart.
// Every other step takes its greedy token on the backend (Model::forward_greedy /
// forward_batch_greedy: the argmax inside the step, 4 bytes per sequence to the host).
// Prompts are random token ids (seeded): speed does not depend on the text.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/bench_profile.h"
#include "cli/bench_trace.h"
#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "core/log.h"
#include "model/deepseek_v4/weight_walk.h"
#include "runtime/sampler.h"

#ifdef CLAWMINE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#endif

namespace clawmine::cli {
namespace {

namespace md = model::deepseek_v4;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

struct BenchArgs {
  ModelOptions model;
  int64_t decode_tokens = 32;
  std::string prompt_lengths = "2048,8192";
  std::string batch_sizes = "1";
  int64_t batch_prompt = 128;
  int64_t prefill_chunk = 0;
  bool profile = false;
  int64_t profile_steps = 8;
  uint64_t seed = 1;
  std::string json;
  std::string ceilings = "on";
  std::string kernel_trace;  // --kernel-trace FILE
  int kernel_trace_steps = 4;
  std::string prefill_trace;  // --prefill-trace FILE
  int64_t sampled_tokens = 32;  // --sampled-tokens: decode steps drawn on the host after the greedy ones
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<int64_t> parse_sizes(const std::string& text, const std::string& flag) {
  std::vector<int64_t> v;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long n = 0;
    try {
      n = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || n <= 0)
      throw Error(str_cat(flag, ": '", item, "' is not a positive size"));
    v.push_back(n);
  }
  if (v.empty()) throw Error(str_cat(flag, ": no sizes given"));
  return v;
}

// How many decode-step graphs were built so far: a recording's cost sits in a step's max.
void print_graph_stats(const ops::Backend& be) {
#ifdef CLAWMINE_HAVE_CUDA
  if (be.device() != Device::kCuda) return;
  const backend::cuda::GraphStats g = backend::cuda::graph_stats(be);
  std::printf("step graphs so far: %lld instantiated, %lld updated in place (CLAWMINE_GRAPH_UPDATE)\n",
              static_cast<long long>(g.instantiated), static_cast<long long>(g.updated));
#else
  (void)be;
#endif
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
std::vector<double> milliseconds(const std::vector<double>& seconds) {
  std::vector<double> ms;
  for (double t : seconds) ms.push_back(t * 1e3);
  return ms;
}

// The greedy token a step took on the backend (Model::forward_greedy: only the id comes to the
// host, as in greedy decoding); a non-finite logit fails the bench, naming it.
int32_t greedy(const md::GreedyToken& g) {
  if (g.non_finite_at >= 0)
    throw Error(str_cat("bench: non-finite logit (", g.non_finite_value, ") at token id ", g.non_finite_at,
                        "; the model's output is not finite (run `clawmine doctor` on the checkpoint)"));
  return g.id;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> d(2, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = d(rng);
  return ids;
}

// What a decode token reads and a prompt token computes, from the bound weights (MTP excluded).
struct TokenCost {
  double weight_bytes = 0;     // every bound weight
  double routed_bytes = 0;     // the routed experts among them
  double bytes_per_token = 0;  // read by one decode token: routed experts top-k of E, one embedding row
  // Of those, the CSA indexers' query and head-weight projections: a step skips them while every
  // indexer store holds at most index_topk rows (ForwardOptions::indexer_always off).
  double indexer_query_bytes = 0;
  double matmul_flops = 0;     // 2 x multiply-adds of every linear one token passes through, head included
};

TokenCost token_cost(const md::Model& m) {
  const md::ModelConfig& cfg = m.config();
  const double active = cfg.n_routed_experts > 0
                            ? static_cast<double>(cfg.num_experts_per_tok) / static_cast<double>(cfg.n_routed_experts)
                            : 0.0;
  TokenCost c;
  md::for_each_weight(m.weights(), [&](const md::WeightRef& r) {
    if (r.mtp) return;
    if (r.linear) {
      const double b = linear_weight_bytes(*r.linear);
      const double f = 2.0 * static_cast<double>(r.linear->out_features) * static_cast<double>(r.linear->in_features);
      const double share = r.family == md::WeightFamily::kRoutedExperts ? active : 1.0;
      c.weight_bytes += b;
      if (r.family == md::WeightFamily::kRoutedExperts) c.routed_bytes += b;
      c.bytes_per_token += b * share;
      c.matmul_flops += f * share;
      if (r.name.ends_with(".attn.indexer.wq_b") || r.name.ends_with(".attn.indexer.weights_proj"))
        c.indexer_query_bytes += b;
      return;
    }
    const double b = static_cast<double>(r.tensor->nbytes());
    c.weight_bytes += b;
    const bool tid2eid = r.name.ends_with(".tid2eid");
    const bool one_row = r.name == "embed.weight" || tid2eid;
    c.bytes_per_token += one_row ? b / static_cast<double>(r.tensor->dim(0)) : b;
    if (r.name == "head.weight") c.matmul_flops += 2.0 * static_cast<double>(r.tensor->numel());
  });
  const md::ModelWeights& w = m.weights();
  if (w.head.data == w.embed.data) {  // tied: the walk visits the table once, as the embedding
    c.bytes_per_token += static_cast<double>(w.embed.nbytes());
    c.matmul_flops += 2.0 * static_cast<double>(w.embed.numel());
  }
  return c;
}

// The card's two ceilings, through the backend (CUDA): a 1 GiB device-to-device copy (bytes read
// + written) and a dense BF16 8192^3 linear (cuBLAS) on random data; medians of a few rounds.
struct Ceilings {
  double copy_gbps = 0, gemm_tflops = 0;
};

Ceilings measure_ceilings(ops::Backend& be) {
  Ceilings c;
  ops::ScratchFrame frame(be);
  {
    const int64_t n = int64_t{1} << 28;  // F32 elements: 1 GiB
    const TensorView src = be.scratch(DType::kF32, {n}), dst = be.scratch(DType::kF32, {n});
    be.fill(src, 1.25f);
    be.copy(src, dst);
    be.synchronize();
    std::vector<double> t;
    for (int round = 0; round < 7; ++round) {
      const auto t0 = Clock::now();
      for (int i = 0; i < 4; ++i) be.copy(src, dst);
      be.synchronize();
      t.push_back(seconds_since(t0) / 4);
    }
    c.copy_gbps = 2.0 * static_cast<double>(src.nbytes()) / median(t) / 1e9;
  }
  {
    const int64_t m = 8192;
    std::vector<uint16_t> host(static_cast<size_t>(m * m));
    uint64_t s = 0x9e3779b97f4a7c15ull;
    auto fill = [&](float scale) {
      for (uint16_t& h : host) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        const float u = static_cast<float>(s >> 40) / 8388608.0f - 1.0f;  // [-1, 1)
        h = f32_to_bf16(u == 0.0f ? scale : u * scale);
      }
    };
    const TensorView x = be.scratch(DType::kBF16, {m, m}), w = be.scratch(DType::kBF16, {m, m});
    const TensorView y = be.scratch(DType::kBF16, {m, m});
    fill(1.0f);
    be.upload(host.data(), x);
    fill(1.0f / 90.0f);
    be.upload(host.data(), w);
    md::LinearWeight lw;
    lw.name = "bench.gemm_8192";
    lw.out_features = lw.in_features = m;
    lw.weight = w;
    be.linear(x, lw, y);
    be.synchronize();
    std::vector<double> t;
    for (int round = 0; round < 5; ++round) {
      const auto t0 = Clock::now();
      for (int i = 0; i < 3; ++i) be.linear(x, lw, y);
      be.synchronize();
      t.push_back(seconds_since(t0) / 3);
    }
    c.gemm_tflops = 2.0 * static_cast<double>(m) * m * m / median(t) / 1e12;
  }
  return c;
}

struct Prefill {
  int64_t tokens = 0;
  double seconds = 0;  // forward of the whole prompt and its greedy token = time to first token
  std::string error;   // the prefill failed (nothing timed)
};
struct Decode {
  int64_t context = 0;  // position of the first decoded token
  // Every step skipped the CSA indexers' queries (each store at most index_topk rows at the end).
  bool indexer_skipped = false;
  std::vector<double> step_seconds;
  std::vector<double> draw_seconds;  // sampled decode: the host sampler's part of each step
};
// Sampled decode at batch 1: a chat request's usual parameters, its token drawn on the host from
// the downloaded logits (the server's path for every request that is not greedy without logprobs).
constexpr float kSampledTemperature = 0.7f, kSampledTopP = 0.95f;
constexpr int64_t kMinBatchedSteps = 12;  // timed batched steps at least

struct RoundRobin {
  int64_t batch = 0, steps = 0, prompt = 0;  // steps: timed rounds
  double prefill_seconds = 0;
  std::vector<double> round_seconds;  // one round = one forward per sequence
  std::vector<double> batch_seconds;  // then the same sequences, one forward_batch per step
  double first_batch_seconds = 0;     // the untimed first batched step (it records the step graph)
};

void print_profile(const OpProfiler& prof, const std::string& title, double steps, double floor_s, Json& out) {
  const double total = prof.total_seconds();
  std::printf("\n-- profile: %s (eager, one device sync per op): %.2f ms per %s over %lld op calls; each call "
              "carries ~%.1f us of launch + sync (a one-element iota)\n",
              title.c_str(), total * 1e3 / steps, steps > 1 ? "step" : "pass",
              static_cast<long long>(prof.total_calls() / steps), floor_s * 1e6);
  std::printf("   %-18s %-30s %7s %10s %9s %6s %9s\n", "op", "module", "calls", "ms", "us/call", "share",
              "weight GB/s");
  Json rows = Json::array();
  int shown = 0;
  double rest = 0;
  for (const OpProfiler::Row& r : prof.rows()) {
    const double ms = r.seconds * 1e3 / steps;
    rows.push_back({{"op", r.op},
                    {"module", r.module},
                    {"calls", static_cast<double>(r.calls) / steps},
                    {"ms", ms},
                    {"weight_bytes", r.weight_bytes / steps}});
    if (shown++ < 24) {
      char gbps[32] = "";
      if (r.weight_bytes > 0) std::snprintf(gbps, sizeof gbps, "%9.0f", r.weight_bytes / r.seconds / 1e9);
      std::printf("   %-18s %-30s %7.1f %10.3f %9.1f %5.1f%% %9s\n", r.op.c_str(), r.module.c_str(),
                  static_cast<double>(r.calls) / steps, ms, r.seconds * 1e6 / static_cast<double>(r.calls),
                  100.0 * r.seconds / total, gbps);
    } else {
      rest += r.seconds;
    }
  }
  if (rest > 0)
    std::printf("   %-57s %10.3f %9s %5.1f%%\n", "(other ops)", rest * 1e3 / steps, "", 100.0 * rest / total);
  out = {{"title", title}, {"ms_per_step", total * 1e3 / steps}, {"call_floor_us", floor_s * 1e6}, {"rows", rows}};
}

void run_bench(const BenchArgs& a) {
  a.model.check_available();
  const std::vector<int64_t> lengths = parse_sizes(a.prompt_lengths, "--prompt-lengths");
  const std::vector<int64_t> batches = parse_sizes(a.batch_sizes, "--batch-sizes");
  if (a.ceilings != "on" && a.ceilings != "off") throw Error("--ceilings: on or off");

  // Opened first: a path that cannot be written fails before the model loads.
  std::unique_ptr<DecodeTraceFile> trace_file, prefill_trace_file;
  if (!a.kernel_trace.empty()) trace_file = std::make_unique<DecodeTraceFile>(a.kernel_trace);
  if (!a.prefill_trace.empty())
    prefill_trace_file = std::make_unique<DecodeTraceFile>(a.prefill_trace, "--prefill-trace", "prefill");
  std::string trace_error;  // "FLAG: why", reported as the command's error once everything else has run
  auto note_trace_error = [&](const DecodeTraceFile& t, const std::string& why) {
    const std::string msg = why.rfind(t.flag(), 0) == 0 ? why : str_cat(t.flag(), ": ", why);
    trace_error = trace_error.empty() ? msg : str_cat(trace_error, "; ", msg);
  };

  LoadedModel lm = a.model.load();
  const md::Model& model = *lm.model;
  ops::Backend& be = *lm.backend;
  const md::ModelConfig& cfg = model.config();
  const int64_t V = cfg.vocab_size;
  md::ForwardOptions fwd = a.model.forward_options();
  fwd.all_logits = false;
  const bool cuda = be.device() == Device::kCuda;
  for (const DecodeTraceFile* t : {trace_file.get(), prefill_trace_file.get()})
    if (t && !cuda) throw Error(str_cat(t->flag(), ": records GPU kernels; it needs --backend cuda"));
  std::string device = "cpu";
#ifdef CLAWMINE_HAVE_CUDA
  if (cuda) device = backend::cuda::device_summary(0);
#endif
  const TokenCost cost = token_cost(model);
  std::printf("model %s: %lld layers, hidden %lld, %lld routed experts (top-%lld); weights %.2f GB, read per decode "
              "token %.3f GB, matmul %.2f GFLOP per token\n",
              a.model.model_dir.c_str(), static_cast<long long>(cfg.num_hidden_layers),
              static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.n_routed_experts),
              static_cast<long long>(cfg.num_experts_per_tok), cost.weight_bytes / 1e9, cost.bytes_per_token / 1e9,
              cost.matmul_flops / 1e9);
  std::printf("backend %s (%s), activations %s, load %.1f s, placement %.1f s\n", be.name(), device.c_str(),
              std::string(dtype_name(be.act_dtype())).c_str(), lm.load_seconds, lm.place_seconds);
  std::fflush(stdout);

  Ceilings ceil;
  if (cuda && a.ceilings == "on") {
    ceil = measure_ceilings(be);
    std::printf("ceilings (this run): copy %.0f GB/s (1 GiB, read + write), BF16 GEMM 8192^3 %.0f TFLOP/s\n",
                ceil.copy_gbps, ceil.gemm_tflops);
  }

  auto prefill = [&](md::SequenceCache& cache, const std::vector<int32_t>& ids, ops::Backend& on) {
    const int64_t n = static_cast<int64_t>(ids.size());
    const int64_t chunk = a.prefill_chunk > 0 ? a.prefill_chunk : n;
    int32_t tok = 0;
    for (int64_t b = 0; b < n; b += chunk) {
      const std::vector<int32_t> piece(ids.begin() + b, ids.begin() + std::min(n, b + chunk));
      tok = greedy(model.forward_greedy(on, cache, piece, fwd));
    }
    return tok;
  };

  // Warm-up: kernel modules, cuBLAS heuristics, the first graph instantiation.
  {
    const auto t0 = Clock::now();
    md::SequenceCache cache = model.new_cache();
    int32_t tok = prefill(cache, random_ids(16, V, a.seed + 99), be);
    for (int i = 0; i < 4; ++i) tok = greedy(model.forward_greedy(be, cache, {tok}, fwd));
    be.synchronize();
    log_info("bench", "warm-up (16-token prompt, 4 decode steps): ", seconds_since(t0), " s");
  }

  // Prefill at each length; the first length's sequence then decodes.
  std::vector<Prefill> prefills;
  Decode decode, sampled;
  for (size_t li = 0; li < lengths.size(); ++li) {
    const int64_t L = lengths[li];
    const std::vector<int32_t> ids = random_ids(L, V, a.seed + static_cast<uint64_t>(L));
    md::SequenceCache cache = model.new_cache();
    int32_t tok = 0;
    try {
      // One untimed prefill at this length first: kernels used only at this size (lazy module
      // loading, cuBLAS heuristics, shared-memory opt-ins) load outside the timed run.
      {
        md::SequenceCache warm = model.new_cache();
        prefill(warm, ids, be);
      }
      be.synchronize();
      const auto t0 = Clock::now();
      tok = prefill(cache, ids, be);
      const double s = seconds_since(t0);
      prefills.push_back({L, s, ""});
      std::printf("prefill %lld tokens: %.1f ms (%.0f tokens/s, time to first token %.1f ms)\n",
                  static_cast<long long>(L), s * 1e3, static_cast<double>(L) / s, s * 1e3);
    } catch (const Error& e) {  // e.g. scratch too small for this length: report it, time the rest
      std::printf("prefill %lld tokens: failed: %s\n", static_cast<long long>(L), e.what());
      prefills.push_back({L, 0, e.what()});
      continue;
    }
    std::fflush(stdout);
    if (li != 0) continue;
    decode.context = cache.position;
    for (int64_t i = 0; i < a.decode_tokens; ++i) {
      const auto d0 = Clock::now();
      tok = greedy(model.forward_greedy(be, cache, {tok}, fwd));
      decode.step_seconds.push_back(seconds_since(d0));
    }
    decode.indexer_skipped =
        !fwd.indexer_always && std::all_of(cache.layers.begin(), cache.layers.end(), [&](const md::LayerCache& l) {
          return md::indexer_takes_every_entry(model.config(), l.indexer);
        });
    if (!decode.step_seconds.empty())
      std::printf("decode batch 1 at context %lld: %lld tokens, median %.2f ms/token, mean %.2f, min %.2f, max %.2f\n",
                  static_cast<long long>(decode.context), static_cast<long long>(a.decode_tokens),
                  median(decode.step_seconds) * 1e3, mean(decode.step_seconds) * 1e3,
                  *std::min_element(decode.step_seconds.begin(), decode.step_seconds.end()) * 1e3,
                  *std::max_element(decode.step_seconds.begin(), decode.step_seconds.end()) * 1e3);
    print_graph_stats(be);
    if (a.sampled_tokens > 0) {
      sampled.context = cache.position;
      runtime::Sampler sampler({.temperature = kSampledTemperature, .top_p = kSampledTopP, .seed = a.seed});
      for (int64_t i = 0; i < a.sampled_tokens; ++i) {
        const auto d0 = Clock::now();
        const Buffer logits = model.forward(be, cache, {tok}, fwd);
        const auto s0 = Clock::now();
        tok = sampler.sample(logits.f32(), logits.view().dim(-1));
        sampled.draw_seconds.push_back(seconds_since(s0));
        sampled.step_seconds.push_back(seconds_since(d0));
      }
      std::printf("decode batch 1 sampled (temperature %.1f, top_p %.2f, drawn on the host) at context %lld: %lld "
                  "tokens, median %.2f ms/token, the draw %.0f us\n",
                  kSampledTemperature, kSampledTopP, static_cast<long long>(sampled.context),
                  static_cast<long long>(a.sampled_tokens), median(sampled.step_seconds) * 1e3,
                  median(sampled.draw_seconds) * 1e6);
    }
    if (prefill_trace_file) {
      // Not timed: one more prefill of this prompt into a new cache, with kernel records on (a
      // first, unwritten one warms the same path under the records).
      try {
        const int64_t n = prefill_trace_file->record(
            1, 1, str_cat(a.model.model_dir, ", prefill of ", L, " tokens, ", device), [&](int) {
              md::SequenceCache pcache = model.new_cache();
              prefill(pcache, ids, be);
            });
        std::printf("prefill trace: %lld kernels of one %lld-token prefill written to %s\n", static_cast<long long>(n),
                    static_cast<long long>(L), a.prefill_trace.c_str());
      } catch (const Error& e) {  // the rest of the bench still runs; the command fails at the end
        note_trace_error(*prefill_trace_file, e.what());
        std::printf("prefill trace: failed: %s\n", e.what());
      }
    }
    if (trace_file) {
      // Not timed: a second sequence with the same prompt decodes with kernel records on. Its
      // first step records its own step graph (a new cache is a new graph key), so the graph's
      // kernels are launched under the records; the steps after it are the ones written.
      try {
        md::SequenceCache tcache = model.new_cache();
        int32_t ttok = prefill(tcache, ids, be);
        const int64_t n = trace_file->record(
            1, a.kernel_trace_steps,
            str_cat(a.model.model_dir, ", decode batch 1 after context ", tcache.position + 1, ", ", device),
            [&](int) { ttok = greedy(model.forward_greedy(be, tcache, {ttok}, fwd)); });
        std::printf("kernel trace: %lld kernels of %d decode steps written to %s\n", static_cast<long long>(n),
                    a.kernel_trace_steps, a.kernel_trace.c_str());
      } catch (const Error& e) {  // the rest of the bench still runs; the command fails at the end
        note_trace_error(*trace_file, e.what());
        std::printf("kernel trace: failed: %s\n", e.what());
      }
    }
    std::fflush(stdout);
  }

  // Batch B > 1: B sequences stepped round-robin (one forward call per sequence and step), then
  // batched (one forward_batch per step).
  struct Sequences {
    std::vector<md::SequenceCache> caches;
    std::vector<md::SequenceCache*> ptrs;
    std::vector<int32_t> toks;  // each sequence's next token
  };
  // B sequences, each prefilled on `on` with its own random prompt of `prompt` tokens.
  auto start_sequences = [&](int64_t B, int64_t prompt, ops::Backend& on) {
    Sequences q;
    for (int64_t s = 0; s < B; ++s) {
      q.caches.push_back(model.new_cache());
      q.toks.push_back(prefill(q.caches.back(), random_ids(prompt, V, a.seed + 1000 + static_cast<uint64_t>(s)), on));
    }
    for (md::SequenceCache& c : q.caches) q.ptrs.push_back(&c);
    return q;
  };
  auto batched_step = [&](Sequences& q, ops::Backend& on) {
    const std::vector<md::GreedyToken> next = model.forward_batch_greedy(on, q.ptrs, q.toks, fwd);
    for (size_t s = 0; s < q.toks.size(); ++s) q.toks[s] = greedy(next[s]);
  };
  // Seconds of each of n calls of step.
  auto timed = [](int64_t n, const auto& step) {
    std::vector<double> t;
    for (int64_t i = 0; i < n; ++i) {
      const auto t0 = Clock::now();
      step();
      t.push_back(seconds_since(t0));
    }
    return t;
  };
  std::vector<RoundRobin> rrs;
  std::vector<Json> batch_profile;
  for (int64_t B : batches) {
    if (B <= 1) continue;
    RoundRobin rr;
    rr.batch = B;
    rr.prompt = a.batch_prompt;
    rr.steps = std::max<int64_t>(4, (a.decode_tokens + B - 1) / B);
    const auto p0 = Clock::now();
    Sequences seqs = start_sequences(B, rr.prompt, be);
    rr.prefill_seconds = seconds_since(p0);
    auto round = [&] {
      for (size_t s = 0; s < seqs.caches.size(); ++s)
        seqs.toks[s] = greedy(model.forward_greedy(be, seqs.caches[s], {seqs.toks[s]}, fwd));
    };
    // Two untimed rounds first: each sequence's second steady step records its step graph (a key
    // is recorded on its second consecutive step), which would otherwise sit in the median when B
    // is large.
    round();
    round();
    rr.round_seconds = timed(rr.steps, round);
    const double r = median(rr.round_seconds);
    std::printf("batch %lld as %lld sequences stepped round-robin: %.2f ms per round of %lld tokens = %.2f "
                "ms/token, %.1f tokens/s (median of %lld rounds after two warm-up rounds, %lld-token prompts)\n",
                static_cast<long long>(B), static_cast<long long>(B), r * 1e3, static_cast<long long>(B),
                r * 1e3 / static_cast<double>(B), static_cast<double>(B) / r, static_cast<long long>(rr.steps),
                static_cast<long long>(rr.prompt));
    std::fflush(stdout);
    // The same sequences, one batched forward per step (Model::forward_batch): two untimed steps
    // first (the second records the batch's step graph), then as many steps as rounds, at least
    // kMinBatchedSteps (a step costs a few rounds' tokens' worth; on the H100 the median of 4
    // steps of batch 32 moved by ~10% between runs of one build).
    auto batch_step = [&] { batched_step(seqs, be); };
    batch_step();
    rr.first_batch_seconds = timed(1, batch_step)[0];
    rr.batch_seconds = timed(std::max(rr.steps, kMinBatchedSteps), batch_step);
    const double bt = median(rr.batch_seconds);
    const auto [bmin, bmax] = std::minmax_element(rr.batch_seconds.begin(), rr.batch_seconds.end());
    std::printf("batch %lld as one batched forward per step: %.2f ms per step of %lld tokens = %.2f ms/token, "
                "%.1f tokens/s (median of %zu steps, min %.2f, max %.2f, after a warm-up step of %.2f ms, which "
                "records the step graph where graphs are on)\n",
                static_cast<long long>(B), bt * 1e3, static_cast<long long>(B), bt * 1e3 / static_cast<double>(B),
                static_cast<double>(B) / bt, rr.batch_seconds.size(), *bmin * 1e3, *bmax * 1e3,
                rr.first_batch_seconds * 1e3);
    std::fflush(stdout);
    print_graph_stats(be);
    rrs.push_back(std::move(rr));
    if (a.profile && B == *std::max_element(batches.begin(), batches.end())) {
      // The largest batch's steps op by op (eager, synchronized: the lanes of per-sequence
      // attention run one op at a time here).
      OpProfiler prof(be);
      const double floor_s = prof.call_floor_seconds();
      Sequences pseqs = start_sequences(B, rr.prompt, prof);  // a cache serves the backend of its first forward
      prof.reset();
      for (int64_t i = 0; i < a.profile_steps; ++i) batched_step(pseqs, prof);
      Json j;
      print_profile(prof, str_cat("batched decode of ", B, " sequences, ", a.profile_steps, " steps"),
                    static_cast<double>(std::max<int64_t>(a.profile_steps, 1)), floor_s, j);
      batch_profile.push_back(j);
    }
  }

  Json profile_json = Json::array();
  if (a.profile) {
    OpProfiler prof(be);
    const double floor_s = prof.call_floor_seconds();
    md::SequenceCache cache = model.new_cache();
    const int64_t L = lengths[0];
    int32_t tok = prefill(cache, random_ids(L, V, a.seed + static_cast<uint64_t>(L)), prof);
    Json j;
    print_profile(prof, str_cat("prefill of ", L, " tokens"), 1.0, floor_s, j);
    profile_json.push_back(j);
    prof.reset();
    for (int64_t i = 0; i < a.profile_steps; ++i) tok = greedy(model.forward_greedy(prof, cache, {tok}, fwd));
    print_profile(prof, str_cat("decode at context ", L, ", ", a.profile_steps, " steps"),
                  static_cast<double>(std::max<int64_t>(a.profile_steps, 1)), floor_s, j);
    profile_json.push_back(j);
    for (Json& b : batch_profile) profile_json.push_back(std::move(b));
  }

  // The summary, last.
  // The floor of the bytes a timed decode step reads: every weight it needs, routed experts top-k
  // of E; less the indexers' query projections where the steps skipped them (context below
  // index_topk x compress_rate_csa: 2048 for V4-Flash).
  const double step_bytes = cost.bytes_per_token - (decode.indexer_skipped ? cost.indexer_query_bytes : 0.0);
  const double floor_ms = ceil.copy_gbps > 0 ? step_bytes / ceil.copy_gbps / 1e6 : 0;
  const double floor_all_ms = ceil.copy_gbps > 0 ? cost.bytes_per_token / ceil.copy_gbps / 1e6 : 0;
  const double dec_ms = median(decode.step_seconds) * 1e3;
  const bool on_gpu = be.device() != Device::kCpu;
  std::printf("\n== clawmine bench: %s on %s (%s, act %s%s%s)\n", a.model.model_dir.c_str(), device.c_str(),
              be.name(), std::string(dtype_name(be.act_dtype())).c_str(), on_gpu ? ", cuda graphs " : "",
              on_gpu ? a.model.cuda_graphs.c_str() : "");
  std::printf("weights %.2f GB (routed experts %.2f GB); one decode token reads %.3f GB; matmul %.2f GFLOP/token\n",
              cost.weight_bytes / 1e9, cost.routed_bytes / 1e9, cost.bytes_per_token / 1e9, cost.matmul_flops / 1e9);
  if (ceil.copy_gbps > 0) {
    std::printf("ceilings measured in this run: copy %.0f GB/s, BF16 GEMM %.0f TFLOP/s; decode floor %.2f ms/token "
                "(weights only)\n",
                ceil.copy_gbps, ceil.gemm_tflops, floor_all_ms);
    if (decode.indexer_skipped && cost.indexer_query_bytes > 0)
      std::printf("the timed decode steps skipped the CSA indexers' query projections (%.3f GB: every store <= "
                  "index_topk rows, --indexer auto): their floor %.2f ms/token\n",
                  cost.indexer_query_bytes / 1e9, floor_ms);
  }
  std::printf("%-34s %-40s %s\n", "what", "measured", "vs floor");
  if (!decode.step_seconds.empty()) {
    char what[64], got[64], vs[64] = "-";
    std::snprintf(what, sizeof what, "decode b=1, ctx %lld", static_cast<long long>(decode.context));
    std::snprintf(got, sizeof got, "%.2f ms/token (%.1f tok/s)", dec_ms, 1e3 / dec_ms);
    if (floor_ms > 0) std::snprintf(vs, sizeof vs, "%.1f%% of copy bw (floor %.2f ms)", 100.0 * floor_ms / dec_ms, floor_ms);
    std::printf("%-34s %-40s %s\n", what, got, vs);
  }
  if (!sampled.step_seconds.empty()) {
    char what[64], got[64], vs[64];
    const double ms = median(sampled.step_seconds) * 1e3;
    std::snprintf(what, sizeof what, "decode b=1 sampled, ctx %lld", static_cast<long long>(sampled.context));
    std::snprintf(got, sizeof got, "%.2f ms/token (%.1f tok/s)", ms, 1e3 / ms);
    std::snprintf(vs, sizeof vs, "host draw %.0f us", median(sampled.draw_seconds) * 1e6);
    std::printf("%-34s %-40s %s\n", what, got, vs);
  }
  for (const Prefill& p : prefills) {
    if (!p.error.empty()) {
      std::printf("%-34s failed: %s\n", str_cat("prefill ", p.tokens).c_str(), p.error.c_str());
      continue;
    }
    char what[64], got[64], vs[80] = "-";
    const double tflops = cost.matmul_flops * static_cast<double>(p.tokens) / p.seconds / 1e12;
    std::snprintf(what, sizeof what, "prefill %lld", static_cast<long long>(p.tokens));
    std::snprintf(got, sizeof got, "%.0f tok/s, TTFT %.0f ms", static_cast<double>(p.tokens) / p.seconds,
                  p.seconds * 1e3);
    if (ceil.gemm_tflops > 0)
      std::snprintf(vs, sizeof vs, "matmul %.1f TFLOP/s = %.1f%% of GEMM", tflops, 100.0 * tflops / ceil.gemm_tflops);
    std::printf("%-34s %-40s %s\n", what, got, vs);
  }
  for (const RoundRobin& rr : rrs) {
    char what[64], got[64];
    const double r = median(rr.round_seconds);
    std::snprintf(what, sizeof what, "b=%lld round-robin", static_cast<long long>(rr.batch));
    std::snprintf(got, sizeof got, "%.2f ms/token, %.1f tok/s total", r * 1e3 / static_cast<double>(rr.batch),
                  static_cast<double>(rr.batch) / r);
    std::printf("%-34s %-40s %s\n", what, got, "-");
    const double bt = median(rr.batch_seconds);
    std::snprintf(what, sizeof what, "b=%lld batched forward", static_cast<long long>(rr.batch));
    std::snprintf(got, sizeof got, "%.2f ms/token, %.1f tok/s total", bt * 1e3 / static_cast<double>(rr.batch),
                  static_cast<double>(rr.batch) / bt);
    std::printf("%-34s %-40s %.2fx round-robin\n", what, got, r / bt);
  }
  std::fflush(stdout);

  if (!a.json.empty()) {
    Json j;
    j["model"] = a.model.model_dir;
    j["backend"] = be.name();
    j["device"] = device;
    j["act_dtype"] = std::string(dtype_name(be.act_dtype()));
    j["cuda_graphs"] = a.model.cuda_graphs;
    j["load_seconds"] = lm.load_seconds;
    j["place_seconds"] = lm.place_seconds;
    j["weight_bytes"] = cost.weight_bytes;
    j["routed_expert_bytes"] = cost.routed_bytes;
    j["bytes_per_decode_token"] = cost.bytes_per_token;
    j["indexer_query_bytes"] = cost.indexer_query_bytes;
    j["matmul_flops_per_token"] = cost.matmul_flops;
    j["copy_gbps"] = ceil.copy_gbps;
    j["gemm_tflops"] = ceil.gemm_tflops;
    j["decode"] = {{"batch", 1},
                   {"context", decode.context},
                   {"tokens", decode.step_seconds.size()},
                   {"median_ms", dec_ms},
                   {"mean_ms", mean(decode.step_seconds) * 1e3},
                   {"step_ms", milliseconds(decode.step_seconds)},
                   {"floor_ms", floor_ms},
                   {"floor_all_weights_ms", floor_all_ms},
                   {"indexer_skipped", decode.indexer_skipped},
                   {"roofline_ratio", dec_ms > 0 ? floor_ms / dec_ms : 0.0}};
    if (!sampled.step_seconds.empty())
      j["decode_sampled"] = {{"batch", 1},
                             {"temperature", kSampledTemperature},
                             {"top_p", kSampledTopP},
                             {"context", sampled.context},
                             {"tokens", sampled.step_seconds.size()},
                             {"median_ms", median(sampled.step_seconds) * 1e3},
                             {"draw_median_us", median(sampled.draw_seconds) * 1e6},
                             {"step_ms", milliseconds(sampled.step_seconds)}};
    Json pj = Json::array();
    for (const Prefill& p : prefills) {
      if (!p.error.empty()) {
        pj.push_back({{"tokens", p.tokens}, {"error", p.error}});
        continue;
      }
      const double tflops = cost.matmul_flops * static_cast<double>(p.tokens) / p.seconds / 1e12;
      pj.push_back({{"tokens", p.tokens},
                    {"seconds", p.seconds},
                    {"tokens_per_second", static_cast<double>(p.tokens) / p.seconds},
                    {"ttft_ms", p.seconds * 1e3},
                    {"matmul_tflops", tflops},
                    {"gemm_ratio", ceil.gemm_tflops > 0 ? tflops / ceil.gemm_tflops : 0.0}});
    }
    j["prefill"] = pj;
    Json rj = Json::array();
    for (const RoundRobin& rr : rrs) {
      const double r = median(rr.round_seconds);
      rj.push_back({{"batch", rr.batch},
                    {"mode", "round-robin: one forward per sequence and step"},
                    {"prompt", rr.prompt},
                    {"rounds", rr.steps},
                    {"ms_per_round", r * 1e3},
                    {"ms_per_token", r * 1e3 / static_cast<double>(rr.batch)},
                    {"tokens_per_second", static_cast<double>(rr.batch) / r}});
    }
    j["round_robin"] = rj;
    Json bj = Json::array();
    for (const RoundRobin& rr : rrs) {
      const double bt = median(rr.batch_seconds);
      bj.push_back({{"batch", rr.batch},
                    {"mode", "one Model::forward_batch per step (row-wise work batched, attention per sequence)"},
                    {"steps", rr.batch_seconds.size()},
                    {"first_step_ms", rr.first_batch_seconds * 1e3},
                    {"step_ms", milliseconds(rr.batch_seconds)},
                    {"ms_per_step", bt * 1e3},
                    {"ms_per_token", bt * 1e3 / static_cast<double>(rr.batch)},
                    {"tokens_per_second", static_cast<double>(rr.batch) / bt}});
    }
    j["batched"] = bj;
    j["profile"] = profile_json;
    std::ofstream f(a.json);
    if (!f) throw Error(str_cat("--json: cannot write '", a.json, "'"));
    f << j.dump() << "\n";
  }
  if (!trace_error.empty()) throw Error(trace_error);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  auto* cmd = app.add_subcommand("bench", "Decode and prefill speed of a model, against the card's measured ceilings");
  a->model.add_to(*cmd);
  cmd->add_option("--sampled-tokens", a->sampled_tokens,
                  "Decode steps at batch 1 drawn on the host after the greedy ones (temperature 0.7, top_p 0.95; 0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--decode-tokens", a->decode_tokens, "Decode steps timed at batch 1 (after the first prompt)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--prompt-lengths", a->prompt_lengths, "Prompt lengths to time prefill at (comma-separated)")
      ->capture_default_str();
  cmd->add_option("--batch-sizes", a->batch_sizes,
                  "Batch sizes; B > 1 decodes B sequences round-robin (one forward each), then batched (one forward_batch per step)")
      ->capture_default_str();
  cmd->add_option("--batch-prompt", a->batch_prompt, "Prompt length of each sequence of a batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--prefill-chunk", a->prefill_chunk, "Prefill chunk size (0: the whole prompt in one pass)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--profile", a->profile, "Op-by-op time of one prefill, of decode steps and of the largest batch's batched steps (eager, synchronized)");
  cmd->add_option("--profile-steps", a->profile_steps, "Decode steps the profile averages")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the random prompts")->capture_default_str();
  cmd->add_option("--ceilings", a->ceilings, "Measure copy bandwidth and BF16 GEMM rate first (CUDA)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd->add_option("--json", a->json, "Write the results as JSON to FILE");
  cmd->add_option("--kernel-trace", a->kernel_trace,
                  "After the timed batch-1 decode, record the GPU's kernels of a few more steps (CUPTI) to FILE as CSV "
                  "(tools/kernel_timeline.py reads it; CUDA)");
  cmd->add_option("--kernel-trace-steps", a->kernel_trace_steps, "Decode steps --kernel-trace records")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_option("--prefill-trace", a->prefill_trace,
                  "After the timed batch-1 decode, record the GPU's kernels of one more prefill of the first prompt "
                  "length (CUPTI) to FILE as CSV (tools/kernel_timeline.py reads it; CUDA)");
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace clawmine::cli
