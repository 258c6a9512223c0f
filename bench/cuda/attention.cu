// Attention-side cases (V4-Flash dims), through ops::Backend:
//   sparse_attention  decode (one query token): 64 heads x 512 over the window (128 keys) +
//                     compressed entries, at contexts 1K, 16K, 128K, for an HCA-like layer (rate
//                     128: every entry, ctx/128) and a CSA-like one (rate 4, the indexer's top-512
//                     of ctx/4 entries);
//                     prefill (a 2048-token chunk ending a 2K or 8K prompt): every token's sliding
//                     window over the chunk + its compressed keys (HCA: all ctx/128 entries; CSA:
//                     its own random top-512 of ctx/4), reported in TFLOP/s (4 H S Dh per token);
//                     prefill causal: an 8K prompt from position 0 with the model's -1 padding
//                     (window before the start, entries not complete yet) for sliding, CSA and
//                     HCA layers, in TFLOP/s of the valid slots;
//   compressor        compress_chunk at a completing window (CSA main: overlap, 2 x 512; CSA
//                     indexer: overlap, 2 x 128; HCA: rate 128, 512);
//   indexer           indexer_scores (64 heads x 128 over ctx/4 keys) and topk (512 of ctx/4);
//                     prefill: a T-token prompt (T = 2048, 8192) over its N = T/4 windows, causal
//                     (half the [T, N] square live), through the backend and straight through the
//                     tensor-core launcher (impl clawmine-mma), in TFLOP/s of the live part;
//                     topk prefill: the top-512 of those causal [T, T/4] scores (normal values).
// Inputs are rotated over copies (per-copy caches), so repeated calls do not read a warm L2.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/indexer_mma.cuh"
#include "bench/cuda/bench.h"
#include "core/error.h"

namespace clawmine::bench {
namespace {

constexpr int64_t kHeads = 64, kHeadDim = 512, kWindow = 128, kTopK = 512;
constexpr int64_t kIdxHeads = 64, kIdxDim = 128, kCsaRate = 4, kHcaRate = 128;
constexpr int64_t kContexts[] = {1024, 16384, 131072};
constexpr double kCopyBudget = 4.0e9;  // device bytes the copies of one case may take

// Copies to rotate through: total touched bytes past the rotation size, within the memory budget.
int copies_for(Env& env, double touched, double allocated, int cap = 256) {
  const int by_cache = static_cast<int>(std::ceil(env.rotate_bytes() / std::max(touched, 1.0)));
  const int by_memory = static_cast<int>(kCopyBudget / std::max(allocated, 1.0));
  return std::clamp(std::min(by_cache, by_memory), 1, cap);
}

std::string ctx_name(int64_t ctx) { return ctx >= 1024 ? str_cat(ctx / 1024, "K") : str_cat(ctx); }

void finish(Env& env, Result& r, const TensorView& out, const std::function<void(int)>& run) {
  try {
    env.be.fill(out, std::nanf(""));
    run(0);
    const int64_t bad = count_nonfinite(env.be, out);
    r.failed = bad != 0;
    r.check = bad ? str_cat("FAIL ", bad, " non-finite") : "finite";
    r.timing = time_op(env.be, r.rotation, run, env.opts.target_ms);
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  env.rep.add(r);
}

// ---- sparse_attention decode -----------------------------------------------------------------
void attention_case(Env& env, bool csa, int64_t ctx, const TensorView& sink) {
  ops::Backend& be = env.be;
  const int64_t N = csa ? ctx / kCsaRate : ctx / kHcaRate;  // compressed entries in the cache
  const int64_t n_comp = csa ? std::min(kTopK, N) : N;      // compressed keys the query reads
  const int64_t S = kWindow + n_comp;
  Result r;
  r.group = "attention";
  r.name = str_cat(csa ? "csa top-512" : "hca rate-128", " ctx ", ctx_name(ctx));
  r.format = "bf16";
  r.impl = "clawmine";
  r.T = 1;
  const double row = 2.0 * kHeadDim;
  r.bytes = 2 * kHeads * row + S * row + 4.0 * S;  // q, out, every key row read once, idx
  r.flops = 4.0 * kHeads * S * kHeadDim;           // q.k and p.v
  r.rotation = copies_for(env, r.bytes, (kWindow + N) * row);
  std::vector<ops::DeviceBuffer> q, kv, ent, idx, out;
  std::mt19937 rng(static_cast<uint32_t>(ctx + csa));
  for (int i = 0; i < r.rotation; ++i) {
    q.emplace_back(be, DType::kBF16, Shape{1, kHeads, kHeadDim});
    kv.emplace_back(be, DType::kBF16, Shape{kWindow, kHeadDim});
    ent.emplace_back(be, DType::kBF16, Shape{N, kHeadDim});
    idx.emplace_back(be, DType::kI32, Shape{1, S});
    out.emplace_back(be, DType::kBF16, Shape{1, kHeads, kHeadDim});
    fill_random(be, q.back().view(), Fill::kFloat, 500 + i, 1.0f);
    fill_random(be, kv.back().view(), Fill::kFloat, 600 + i, 1.0f);
    fill_random(be, ent.back().view(), Fill::kFloat, 700 + i, 1.0f);
    // Window rows 0..127 (the pool), then entry rows kWindow + j: HCA every entry, CSA a random
    // top-k selection (distinct entries, in score order, i.e. unsorted).
    std::vector<int32_t> h(static_cast<size_t>(S));
    std::iota(h.begin(), h.begin() + kWindow, 0);
    std::vector<int32_t> sel(static_cast<size_t>(N));
    std::iota(sel.begin(), sel.end(), 0);
    if (csa) std::shuffle(sel.begin(), sel.end(), rng);
    for (int64_t j = 0; j < n_comp; ++j) h[static_cast<size_t>(kWindow + j)] = static_cast<int32_t>(kWindow + sel[j]);
    be.upload(h.data(), idx.back().view());
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  finish(env, r, out[0].view(), [&](int i) {
    be.sparse_attention(q[i].view(), kv[i].view(), ent[i].view(), idx[i].view(), sink, scale, out[i].view());
  });
}

// ---- sparse_attention prefill ----------------------------------------------------------------
void attention_prefill_case(Env& env, bool csa, int64_t ctx, const TensorView& sink) {
  ops::Backend& be = env.be;
  constexpr int64_t kT = 2048;
  const int64_t N = csa ? ctx / kCsaRate : ctx / kHcaRate;  // compressed entries in the cache
  const int64_t n_comp = csa ? std::min(kTopK, N) : N;      // compressed keys each query reads
  const int64_t S = kWindow + n_comp;
  Result r;
  r.group = "attention";
  r.name = str_cat(csa ? "prefill csa top-512" : "prefill hca rate-128", " ctx ", ctx_name(ctx), " S ", S);
  r.format = "bf16";
  r.impl = "clawmine";
  r.T = kT;
  const double row = 2.0 * kHeadDim;
  r.bytes = 2.0 * kT * kHeads * row + (kT + N) * row + 4.0 * kT * S;  // q, out, each key row once, idx
  r.flops = 4.0 * kT * kHeads * S * kHeadDim;                         // q.k and p.v
  r.rotation = copies_for(env, r.bytes, r.bytes, 4);
  std::vector<ops::DeviceBuffer> q, kv, ent, idx, out;
  std::mt19937 rng(static_cast<uint32_t>(ctx * 3 + csa));
  for (int i = 0; i < r.rotation; ++i) {
    q.emplace_back(be, DType::kBF16, Shape{kT, kHeads, kHeadDim});
    kv.emplace_back(be, DType::kBF16, Shape{kT, kHeadDim});  // the chunk's own rows (the window pool)
    ent.emplace_back(be, DType::kBF16, Shape{N, kHeadDim});
    idx.emplace_back(be, DType::kI32, Shape{kT, S});
    out.emplace_back(be, DType::kBF16, Shape{kT, kHeads, kHeadDim});
    fill_random(be, q.back().view(), Fill::kFloat, 1500 + i, 1.0f);
    fill_random(be, kv.back().view(), Fill::kFloat, 1600 + i, 1.0f);
    fill_random(be, ent.back().view(), Fill::kFloat, 1700 + i, 1.0f);
    // Token t: window rows t-127 .. t (-1 before the chunk), then entry rows kT + j (HCA every
    // entry; CSA a random distinct top-k per token, in score order).
    std::vector<int32_t> h(static_cast<size_t>(kT * S), -1);
    std::vector<int32_t> sel(static_cast<size_t>(N));
    std::iota(sel.begin(), sel.end(), 0);
    for (int64_t t = 0; t < kT; ++t) {
      int32_t* row_idx = h.data() + t * S;
      for (int64_t s = 0; s < kWindow; ++s) {
        const int64_t kp = t - kWindow + 1 + s;
        row_idx[s] = kp >= 0 ? static_cast<int32_t>(kp) : -1;
      }
      if (csa) std::shuffle(sel.begin(), sel.end(), rng);
      for (int64_t j = 0; j < n_comp; ++j) row_idx[kWindow + j] = static_cast<int32_t>(kT + sel[static_cast<size_t>(j)]);
    }
    be.upload(h.data(), idx.back().view());
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  finish(env, r, out[0].view(), [&](int i) {
    be.sparse_attention(q[i].view(), kv[i].view(), ent[i].view(), idx[i].view(), sink, scale, out[i].view());
  });
}

// ---- sparse_attention prefill, model-shaped ------------------------------------------------------
// An 8192-token prompt in one chunk from position 0, index lists as attention_index makes them:
// window slots t-127 .. t (-1 before the start), then the compressed slots: sliding none; CSA
// min(512, (t+1)/4) distinct random entries complete at t (-1 after); HCA the (t+1)/128 complete
// entries of 64 (-1 after). TFLOP/s counts the valid slots only (4 H Dh per valid slot).
void attention_prefill_model_case(Env& env, int kind, const TensorView& sink) {
  ops::Backend& be = env.be;
  constexpr int64_t kT = 8192;
  const int64_t N = kind == 1 ? kT / kCsaRate : kind == 2 ? kT / kHcaRate : 0;  // entries at the end
  const int64_t n_comp = kind == 1 ? kTopK : N;
  const int64_t S = kWindow + n_comp;
  Result r;
  r.group = "attention";
  r.name = str_cat("prefill causal ", kind == 0 ? "sliding" : kind == 1 ? "csa top-512" : "hca rate-128",
                   " T 8K from 0 S ", S);
  r.format = "bf16";
  r.impl = "clawmine";
  r.T = kT;
  std::vector<int32_t> h(static_cast<size_t>(kT * S), -1);
  std::mt19937 rng(static_cast<uint32_t>(77 + kind));
  std::vector<int32_t> pool(static_cast<size_t>(std::max<int64_t>(N, 1)));
  double valid = 0;
  for (int64_t t = 0; t < kT; ++t) {
    int32_t* row_idx = h.data() + t * S;
    for (int64_t s = 0; s < kWindow; ++s) {
      const int64_t kp = t - kWindow + 1 + s;
      if (kp >= 0) row_idx[s] = static_cast<int32_t>(kp), ++valid;
    }
    const int64_t complete = kind == 1 ? (t + 1) / kCsaRate : kind == 2 ? (t + 1) / kHcaRate : 0;
    const int64_t n = std::min(n_comp, complete);
    if (kind == 1) {  // n distinct of the complete entries (partial Fisher-Yates)
      std::iota(pool.begin(), pool.begin() + complete, 0);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pick = j + static_cast<int64_t>(rng() % static_cast<uint32_t>(complete - j));
        std::swap(pool[static_cast<size_t>(j)], pool[static_cast<size_t>(pick)]);
        row_idx[kWindow + j] = static_cast<int32_t>(kT + pool[static_cast<size_t>(j)]);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) row_idx[kWindow + j] = static_cast<int32_t>(kT + j);
    }
    valid += static_cast<double>(n);
  }
  const double row = 2.0 * kHeadDim;
  r.bytes = 2.0 * kT * kHeads * row + (kT + N) * row + 4.0 * kT * S;  // q, out, each key row once, idx
  r.flops = 4.0 * kHeads * kHeadDim * valid;
  r.rotation = copies_for(env, r.bytes, r.bytes, 4);
  std::vector<ops::DeviceBuffer> q, kv, ent, idx, out;
  for (int i = 0; i < r.rotation; ++i) {
    q.emplace_back(be, DType::kBF16, Shape{kT, kHeads, kHeadDim});
    kv.emplace_back(be, DType::kBF16, Shape{kT, kHeadDim});
    ent.emplace_back(be, DType::kBF16, Shape{std::max<int64_t>(N, 1), kHeadDim});
    idx.emplace_back(be, DType::kI32, Shape{kT, S});
    out.emplace_back(be, DType::kBF16, Shape{kT, kHeads, kHeadDim});
    fill_random(be, q.back().view(), Fill::kFloat, 1800 + i, 1.0f);
    fill_random(be, kv.back().view(), Fill::kFloat, 1900 + i, 1.0f);
    fill_random(be, ent.back().view(), Fill::kFloat, 2000 + i, 1.0f);
    be.upload(h.data(), idx.back().view());
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  finish(env, r, out[0].view(), [&](int i) {
    be.sparse_attention(q[i].view(), kv[i].view(), N > 0 ? ent[i].view() : TensorView{}, idx[i].view(), sink, scale,
                        out[i].view());
  });
}

// ---- compressor ------------------------------------------------------------------------------
void compressor_case(Env& env, const char* what, int64_t rate, bool overlap, int64_t hd, int64_t ctx) {
  ops::Backend& be = env.be;
  const int64_t c = overlap ? 2 : 1, W = c * hd, p0 = ctx - 1;  // position ctx-1 completes a window
  Result r;
  r.group = "compressor";
  r.name = str_cat(what, " ctx ", ctx_name(ctx));
  r.format = "f32";
  r.impl = "clawmine";
  r.T = 1;
  // kv + gate rows, ape row, the pending rows read and written, overlap rows, one pooled entry.
  r.bytes = 4.0 * (2 * W + W + 2 * 2 * (rate - 1) * W + (overlap ? 2 * 2 * rate * hd : 0) + hd);
  r.flops = 4.0 * c * rate * hd;  // softmax-weighted sum over the slots
  struct Set {
    ops::DeviceBuffer kv, gate, ape, pkv, pgate, okv, ogate, pooled, pos, entry_pos;
  };
  r.rotation = copies_for(env, r.bytes, r.bytes, 64);
  std::vector<Set> sets;
  for (int i = 0; i < r.rotation; ++i) {
    Set s;
    s.kv = ops::DeviceBuffer(be, DType::kF32, {1, W});
    s.gate = ops::DeviceBuffer(be, DType::kF32, {1, W});
    s.ape = ops::DeviceBuffer(be, DType::kF32, {rate, W});
    s.pkv = ops::DeviceBuffer(be, DType::kF32, {rate, W});
    s.pgate = ops::DeviceBuffer(be, DType::kF32, {rate, W});
    if (overlap) {
      s.okv = ops::DeviceBuffer(be, DType::kF32, {rate, hd});
      s.ogate = ops::DeviceBuffer(be, DType::kF32, {rate, hd});
    }
    s.pooled = ops::DeviceBuffer(be, DType::kF32, {1, hd});
    s.pos = ops::DeviceBuffer(be, DType::kI32, {1});
    s.entry_pos = ops::DeviceBuffer(be, DType::kI32, {1});
    const int32_t p0_i32 = static_cast<int32_t>(p0);
    be.upload(&p0_i32, s.pos.view());
    uint64_t seed = 800 + 16 * static_cast<uint64_t>(i);
    for (const ops::DeviceBuffer* b : {&s.kv, &s.gate, &s.ape, &s.pkv, &s.pgate, &s.okv, &s.ogate})
      if (!b->view().empty()) fill_random(be, b->view(), Fill::kFloat, seed++, 1.0f);
    sets.push_back(std::move(s));
  }
  finish(env, r, sets[0].pooled.view(), [&](int i) {
    Set& s = sets[static_cast<size_t>(i)];
    const ops::CompressorStateView st{s.pkv.view(), s.pgate.view(), s.okv.view(), s.ogate.view()};
    be.compress_chunk(s.kv.view(), s.gate.view(), s.ape.view(), s.pos.view(), rate, overlap, st, s.pooled.view(),
                      s.entry_pos.view());
  });
}

// ---- indexer ---------------------------------------------------------------------------------
void indexer_cases(Env& env, int64_t ctx) {
  ops::Backend& be = env.be;
  const int64_t N = ctx / kCsaRate;
  {
    Result r;
    r.group = "indexer";
    r.name = str_cat("indexer_scores ctx ", ctx_name(ctx));
    r.format = "bf16";
    r.impl = "clawmine";
    r.T = 1;
    r.bytes = 2.0 * N * kIdxDim + 2.0 * kIdxHeads * kIdxDim + 2.0 * kIdxHeads + 4.0 * N;  // keys, q, weights, scores
    r.flops = 2.0 * kIdxHeads * N * kIdxDim + 3.0 * kIdxHeads * N;
    r.rotation = copies_for(env, r.bytes, r.bytes);
    std::vector<ops::DeviceBuffer> q, keys, w, pos, scores;
    const int32_t p = static_cast<int32_t>(ctx - 1);
    for (int i = 0; i < r.rotation; ++i) {
      q.emplace_back(be, DType::kBF16, Shape{1, kIdxHeads, kIdxDim});
      keys.emplace_back(be, DType::kBF16, Shape{N, kIdxDim});
      w.emplace_back(be, DType::kBF16, Shape{1, kIdxHeads});
      pos.emplace_back(be, DType::kI32, Shape{1});
      scores.emplace_back(be, DType::kF32, Shape{1, N});
      fill_random(be, q.back().view(), Fill::kFloat, 900 + i, 1.0f);
      fill_random(be, keys.back().view(), Fill::kFloat, 1900 + i, 1.0f);
      fill_random(be, w.back().view(), Fill::kFloat, 2900 + i, 1.0f);
      be.upload(&p, pos.back().view());
    }
    const float ws = 1.0f / std::sqrt(static_cast<float>(kIdxDim)) / std::sqrt(static_cast<float>(kIdxHeads));
    finish(env, r, scores[0].view(), [&](int i) {
      be.indexer_scores(q[i].view(), keys[i].view(), w[i].view(), ws, pos[i].view(), kCsaRate, scores[i].view());
    });
  }
  {
    Result r;
    r.group = "indexer";
    r.name = str_cat("topk 512 ctx ", ctx_name(ctx));
    r.format = "f32";
    r.impl = "clawmine";
    r.T = 1;
    r.bytes = 4.0 * N + 4.0 * kTopK;
    r.flops = 0;
    r.rotation = copies_for(env, r.bytes, r.bytes);
    std::vector<ops::DeviceBuffer> v, out;
    for (int i = 0; i < r.rotation; ++i) {
      v.emplace_back(be, DType::kF32, Shape{1, N});
      out.emplace_back(be, DType::kI32, Shape{1, kTopK});
      fill_random(be, v.back().view(), Fill::kFloat, 3900 + i, 1.0f);
    }
    try {
      r.timing = time_op(be, r.rotation, [&](int i) { be.topk(v[i].view(), kTopK, out[i].view()); },
                         env.opts.target_ms);
      r.check = "-";
    } catch (const std::exception& e) {
      r.failed = true;
      r.check = str_cat("error: ", e.what());
    }
    env.rep.add(r);
  }
}

// ---- indexer_scores prefill -------------------------------------------------------------------
// Token t of a prompt at positions 0..T-1 scores the N = T/4 complete windows j < (t+1)/4; the
// rest of its row is -inf. direct: launch_indexer_scores_mma on the backend's stream (the
// tensor-core kernel whatever the backend's dispatch picks); its check also compares with the
// backend op's result (rel L2).
void indexer_prefill_case(Env& env, int64_t T, bool direct) {
  ops::Backend& be = env.be;
  const int64_t N = T / kCsaRate;
  Result r;
  r.group = "indexer";
  r.name = str_cat("indexer_scores prefill T ", T, " N ", N);
  r.format = "bf16";
  r.impl = direct ? "clawmine-mma" : "clawmine";
  r.T = T;
  std::vector<int32_t> pos(static_cast<size_t>(T));
  double live = 0;  // (t, j) pairs scored
  for (int64_t t = 0; t < T; ++t) {
    pos[static_cast<size_t>(t)] = static_cast<int32_t>(t);
    live += static_cast<double>(std::min(N, (t + 1) / kCsaRate));
  }
  r.bytes = 2.0 * T * kIdxHeads * kIdxDim + 2.0 * N * kIdxDim + 2.0 * T * kIdxHeads + 4.0 * T * N;
  r.flops = (2.0 * kIdxDim + 3.0) * kIdxHeads * live;  // q.k per head, relu, * w, +
  r.rotation = copies_for(env, r.bytes, r.bytes, 4);
  std::vector<ops::DeviceBuffer> q, keys, w, p, scores;
  for (int i = 0; i < r.rotation; ++i) {
    q.emplace_back(be, DType::kBF16, Shape{T, kIdxHeads, kIdxDim});
    keys.emplace_back(be, DType::kBF16, Shape{N, kIdxDim});
    w.emplace_back(be, DType::kBF16, Shape{T, kIdxHeads});
    p.emplace_back(be, DType::kI32, Shape{T});
    scores.emplace_back(be, DType::kF32, Shape{T, N});
    fill_random(be, q.back().view(), Fill::kFloat, 4900 + i, 1.0f);
    fill_random(be, keys.back().view(), Fill::kFloat, 5900 + i, 1.0f);
    fill_random(be, w.back().view(), Fill::kFloat, 6900 + i, 1.0f);
    be.upload(pos.data(), p.back().view());
  }
  const float ws = 1.0f / std::sqrt(static_cast<float>(kIdxDim)) / std::sqrt(static_cast<float>(kIdxHeads));
  const cudaStream_t stream = dynamic_cast<backend::cuda::CudaBackend&>(be).stream();
  auto run = [&](int i) {
    if (!direct) {
      be.indexer_scores(q[i].view(), keys[i].view(), w[i].view(), ws, p[i].view(), kCsaRate, scores[i].view());
      return;
    }
    const bool ok = backend::cuda::launch_indexer_scores_mma(
        q[i].view().as<__nv_bfloat16>(), keys[i].view().as<__nv_bfloat16>(), w[i].view().data, true, ws,
        p[i].view().as<int32_t>(), kCsaRate, T, kIdxHeads, kIdxDim, N, scores[i].view().as<float>(), stream);
    CLAWMINE_CHECK(ok, "launch_indexer_scores_mma declined T ", T, " N ", N);
  };
  try {
    // Check: -inf exactly past each token's limit, finite before it; direct: rel L2 against the
    // backend op on the same inputs.
    be.fill(scores[0].view(), std::nanf(""));
    run(0);
    std::vector<float> got(static_cast<size_t>(T * N));
    be.download(scores[0].view(), got.data());
    int64_t bad = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < N; ++j) {
        const float v = got[static_cast<size_t>(t * N + j)];
        bad += j < (t + 1) / kCsaRate ? !std::isfinite(v) : v != -INFINITY;
      }
    r.check = bad ? str_cat("FAIL ", bad, " outside the causal pattern") : "causal mask";
    if (!bad && direct) {
      ops::DeviceBuffer ref(be, DType::kF32, Shape{T, N});
      be.indexer_scores(q[0].view(), keys[0].view(), w[0].view(), ws, p[0].view(), kCsaRate, ref.view());
      std::vector<float> want(got.size());
      be.download(ref.view(), want.data());
      double num = 0, den = 0;
      for (size_t k = 0; k < got.size(); ++k) {
        if (want[k] == -INFINITY) continue;
        num += (static_cast<double>(got[k]) - want[k]) * (static_cast<double>(got[k]) - want[k]);
        den += static_cast<double>(want[k]) * want[k];
      }
      const double rel = std::sqrt(num / std::max(den, 1e-30));
      bad = rel > 1e-2 || !std::isfinite(rel);
      r.check = str_cat(bad ? "FAIL rel " : "rel ", sci(rel), " vs backend op");
    }
    r.failed = bad != 0;
    r.timing = time_op(be, r.rotation, run, env.opts.target_ms);
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  env.rep.add(r);
}

// ---- topk prefill ------------------------------------------------------------------------------
// The indexer's top-512 for a T-token prompt from position 0: scores [T, N = T/4] with row t live
// on its (t+1)/4 complete windows and -inf after (a quarter of the rows take every live entry).
// Check: every row's picks are its min(k, live) largest, largest first, ties to the lower index,
// then -1 (against the host values).
void topk_prefill_case(Env& env, int64_t T) {
  ops::Backend& be = env.be;
  const int64_t N = T / kCsaRate;
  Result r;
  r.group = "indexer";
  r.name = str_cat("topk 512 prefill T ", T, " N ", N);
  r.format = "f32";
  r.impl = "clawmine";
  r.T = T;
  r.bytes = 4.0 * T * N + 4.0 * T * kTopK;
  r.rotation = copies_for(env, r.bytes, r.bytes, 4);
  std::mt19937 rng(77);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> host(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < N; ++j)
      host[static_cast<size_t>(t * N + j)] = j < (t + 1) / kCsaRate ? normal(rng) : -INFINITY;
  std::vector<ops::DeviceBuffer> v, out;
  for (int i = 0; i < r.rotation; ++i) {
    v.emplace_back(be, DType::kF32, Shape{T, N});
    out.emplace_back(be, DType::kI32, Shape{T, kTopK});
    be.upload(host.data(), v.back().view());
  }
  auto run = [&](int i) { be.topk(v[i].view(), kTopK, out[i].view()); };
  try {
    run(0);
    std::vector<int32_t> got(static_cast<size_t>(T * kTopK));
    be.download(out[0].view(), got.data());
    int64_t bad_rows = 0;
    std::vector<char> picked(static_cast<size_t>(N));
    for (int64_t t = 0; t < T; ++t) {
      const float* row = host.data() + t * N;
      const int32_t* o = got.data() + t * kTopK;
      const int64_t m = std::min(kTopK, (t + 1) / kCsaRate);
      std::fill(picked.begin(), picked.end(), 0);
      bool ok = true;
      for (int64_t s = 0; s < kTopK && ok; ++s) {
        if (s >= m) {
          ok = o[s] == -1;
          continue;
        }
        ok = o[s] >= 0 && o[s] < N && !picked[o[s]] && row[o[s]] != -INFINITY;
        if (ok && s > 0) ok = row[o[s - 1]] > row[o[s]] || (row[o[s - 1]] == row[o[s]] && o[s - 1] < o[s]);
        if (ok) picked[o[s]] = 1;
      }
      // Nothing left out ranks above the last pick.
      if (ok && m > 0) {
        const int32_t last = o[m - 1];
        for (int64_t j = 0; j < N && ok; ++j)
          if (!picked[j] && row[j] != -INFINITY) ok = row[j] < row[last] || (row[j] == row[last] && j > last);
      }
      bad_rows += !ok;
    }
    r.failed = bad_rows != 0;
    r.check = bad_rows ? str_cat("FAIL ", bad_rows, " rows") : "exact picks";
    r.timing = time_op(be, r.rotation, run, env.opts.target_ms);
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  env.rep.add(r);
}

}  // namespace

void run_attention_cases(Env& env) {
  ops::Backend& be = env.be;
  if (env.opts.wants("attention")) {
    ops::DeviceBuffer sink(be, DType::kF32, {kHeads});
    fill_random(be, sink.view(), Fill::kFloat, 42, 1.0f);
    for (bool csa : {false, true})
      for (int64_t ctx : kContexts) attention_case(env, csa, ctx, sink.view());
    for (bool csa : {false, true})
      for (int64_t ctx : {int64_t{2048}, int64_t{8192}}) attention_prefill_case(env, csa, ctx, sink.view());
    for (int kind : {0, 1, 2}) attention_prefill_model_case(env, kind, sink.view());
  }
  if (env.opts.wants("compressor")) {
    for (int64_t ctx : {int64_t{16384}, int64_t{131072}}) {
      compressor_case(env, "csa 2x512 rate 4", kCsaRate, true, kHeadDim, ctx);
      compressor_case(env, "csa-indexer 2x128 rate 4", kCsaRate, true, kIdxDim, ctx);
      compressor_case(env, "hca 512 rate 128", kHcaRate, false, kHeadDim, ctx);
    }
  }
  if (env.opts.wants("indexer")) {
    for (int64_t ctx : {int64_t{16384}, int64_t{131072}}) indexer_cases(env, ctx);
    for (int64_t T : {int64_t{2048}, int64_t{8192}})
      for (bool direct : {false, true}) indexer_prefill_case(env, T, direct);
    for (int64_t T : {int64_t{2048}, int64_t{8192}}) topk_prefill_case(env, T);
  }
}

}  // namespace clawmine::bench
