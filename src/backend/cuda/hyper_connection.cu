// Manifold-constrained hyper-connections (spec §3.2): hc_pre, hc_post, hc_head.
// hc_pre / hc_head at decode (T <= kFusedMaxT tokens): ONE kernel, hc_fused (see its comment):
//   grid (token, chunk of 256 elements of the flattened hc*D row: 64 blocks for V4), every load
//   of a block issued at once; the last block of a token (per-token counter) sums the partials in
//   a fixed order, with its collapse loads of X already in flight, then every warp computes the
//   gates from the totals and warp 0 runs the Sinkhorn while the others collapse the streams.
// hc_pre / hc_head at prefill: two kernels.
//   1. the mix partials: hc_mix_tile (T >= 128, n a multiple of 256, aligned): blocks of 256
//      tokens x a split of the row, fn staged in shared memory and reused by 32 tokens per load,
//      X read once (see its comment); else hc_mix_partial: grid (token, split), each block
//      accumulates over its part of the row the sum of squares and the n_mix dot products with
//      the rows of fn. Both write n_mix + 1 partial sums per (token, split).
//   2. hc_finish: one block per token sums the partials (split order fixed), then as hc_fused's
//      last block.
// Gates and comb (both paths, hc_gates): r = 1/sqrt(mean + rms_eps), one lane per gate; comb in
// one thread with the hc x hc matrix in registers: softmax along rows, then the Sinkhorn
// normalizations, each a sum in pairwise order, + eps, and a multiplication by the reciprocal
// (rcp.approx: within 1 ulp, one instruction; the comb budget against the CPU's doubles is 1e-5).
// hc_post: one thread per (token, 4 consecutive d): every output stream k from post, comb^T and
// the hc input streams. All maths in float32 (the CPU works in double; budgets in the tests).
// hc_mult = 4 is instantiated (V4-Flash and V4-Pro); another value is one case in hc_dispatch.
#include <algorithm>

#include "backend/cuda/hc_device.cuh"

namespace clawmine::backend::cuda {
namespace {

// hc_pre (kHead false) or hc_head (true) for HC streams: the fused kernel for T <= kFusedMaxT,
// else the two prefill passes (with `norm`, prefill hc_pre only: the finish pass normalizes x_in).
template <int HC, bool kHead>
void hc_mix_and_finish(CudaBackend& be, const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                       const TensorView& out, float* post, float* comb, const char* op,
                       const HcNorm* norm = nullptr) {
  constexpr int kMix = mix_count<HC, kHead>();
  const int64_t T = X.dim(0), D = X.dim(2), n = HC * D;
  const bool fused = T <= kFusedMaxT;
  // Prefill with whole fn chunks and 16-byte aligned rows: the token-tile mix kernel.
  const bool tile = !fused && tile_mix_fits(T, n, X.data, w.fn.data);
  int64_t S, chunk;
  if (fused) {  // fixed chunks: 64 blocks per token for V4's n = 16384
    chunk = kFusedChunk;
  } else if (tile) {
    chunk = tile_mix_chunk(be, T, n);
  } else {  // each split at least kMinSplit elements, about two blocks per SM
    const int64_t target = 2 * std::max(1, be.sm_count());
    const int64_t want = std::clamp<int64_t>((target + T - 1) / T, 1, std::max<int64_t>(1, n / kMinSplit));
    chunk = ((n + want - 1) / want + 3) / 4 * 4;
  }
  S = (n + chunk - 1) / chunk;
  CLAWMINE_CHECK(S <= 65535 && T <= INT32_MAX, "cuda ", op, ": X ", shape_str(X.shape), " exceeds the grid");
  ops::ScratchFrame frame(be);
  const TensorView partial = be.scratch(DType::kF32, {T, S, kMix + 1});
  const HcScalars scalars = hc_scalars(w, p, op);
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(S));
  unsigned* counters = fused ? hc_counters(be) : nullptr;
  dispatch_float(w.fn.dtype, op, "fn", [&](auto tf) {
    using Tf = decltype(tf);
    const bool packed_mix = rowwise::packable<float, 4>(X.data, n) && rowwise::packable<Tf, 4>(w.fn.data, n);
    if (tile) {
      const dim3 tgrid(static_cast<unsigned>((T + kTileTokens - 1) / kTileTokens), static_cast<unsigned>(S));
      launch_kernel(hc_mix_tile_kernel<kMix, Tf>, tgrid, 32 * kTileWarps, 0, be.stream(), X.f32(),
                    w.fn.as<const Tf>(), static_cast<int>(T), static_cast<int>(n), static_cast<int>(chunk),
                    partial.f32());
      CLAWMINE_CUDA_LAUNCHED("hc mix tile");
    } else if (!fused) {
      launch_kernel(hc_mix_partial_kernel<kMix, Tf>, grid, kThreads, 0, be.stream(), X.f32(), w.fn.as<const Tf>(), n,
                    chunk, partial.f32(), packed_mix);
      CLAWMINE_CUDA_LAUNCHED("hc mix");
    }
    dispatch_float(out.dtype, op, kHead ? "y" : "x_in", [&](auto to) {
      using To = decltype(to);
      const bool packed_out = rowwise::packable<float, 4>(X.data, D) && rowwise::packable<To, 4>(out.data, D);
      if (fused) {
        launch_kernel(hc_fused_kernel<HC, kHead, Tf, To>, grid, kThreads, 0, be.stream(), X.f32(),
                      w.fn.as<const Tf>(), D, partial.f32(), counters, scalars, out.as<To>(), post, comb,
                      packed_mix, packed_out);
        CLAWMINE_CUDA_LAUNCHED("hc fused");
      } else if (norm != nullptr) {  // hc_post_pre at prefill (packed rows): the norm at the end
        if constexpr (!kHead) {
          launch_kernel(hc_finish_norm_kernel<HC, To>, static_cast<unsigned>(T), kThreads, 0, be.stream(), X.f32(),
                        partial.f32(), static_cast<int>(S), D, scalars, *norm, out.as<To>(), post, comb);
          CLAWMINE_CUDA_LAUNCHED("hc finish norm");
        }
      } else {
        launch_kernel(hc_finish_kernel<HC, kHead, To>, static_cast<unsigned>(T), kThreads, 0, be.stream(), X.f32(),
                      partial.f32(), static_cast<int>(S), D, scalars, out.as<To>(), post, comb, packed_out);
        CLAWMINE_CUDA_LAUNCHED("hc finish");
      }
    });
  });
}

// hc_pre's argument checks (also the fused site's, on its X_out); returns X's shape.
HcShape check_pre(CudaBackend& be, const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                  const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  const auto [T, hc, D] = check_streams(be, X, p.hc_mult, "hc_pre");
  const int64_t n_mix = (2 + hc) * hc;
  CLAWMINE_CHECK(p.sinkhorn_iters >= 1 && p.sinkhorn_iters <= (1 << 20), "cuda hc_pre: sinkhorn_iters ",
                 p.sinkhorn_iters, " must be in [1, 2^20]");
  check_weights(be, w, n_mix, hc * D, 3, "hc_pre");
  be.expect_device(x_in, "hc_pre", "x_in");
  be.expect_device(post, "hc_pre", "post");
  be.expect_device(comb, "hc_pre", "comb");
  CLAWMINE_CHECK(x_in.numel() == T * D, "cuda hc_pre: x_in ", shape_str(x_in.shape), " does not hold [", T, ", ", D,
                 "]");
  CLAWMINE_CHECK(post.dtype == DType::kF32 && post.numel() == T * hc, "cuda hc_pre: post must be [", T, ", ", hc,
                 "] F32, got ", dtype_name(post.dtype), " ", shape_str(post.shape));
  CLAWMINE_CHECK(comb.dtype == DType::kF32 && comb.numel() == T * hc * hc, "cuda hc_pre: comb must be [", T, ", ", hc,
                 ", ", hc, "] F32, got ", dtype_name(comb.dtype), " ", shape_str(comb.shape));
  return {T, hc, D};
}

// hc_post's argument checks (also the fused site's); returns X's shape.
HcShape check_post(CudaBackend& be, const TensorView& y, const TensorView& X, const TensorView& post,
                   const TensorView& comb, const TensorView& X_out) {
  be.expect_device(y, "hc_post", "y");
  be.expect_device(X, "hc_post", "X");
  be.expect_device(post, "hc_post", "post");
  be.expect_device(comb, "hc_post", "comb");
  be.expect_device(X_out, "hc_post", "X_out");
  CLAWMINE_CHECK(X.dtype == DType::kF32 && X.rank() == 3, "cuda hc_post: X must be [T, hc, D] F32, got ",
                 dtype_name(X.dtype), " ", shape_str(X.shape));
  const int64_t T = X.dim(0), hc = X.dim(1), D = X.dim(2);
  CLAWMINE_CHECK(y.numel() == T * D, "cuda hc_post: y ", shape_str(y.shape), " does not hold [", T, ", ", D, "]");
  CLAWMINE_CHECK(post.dtype == DType::kF32 && post.numel() == T * hc, "cuda hc_post: post must be [", T, ", ", hc,
                 "] F32, got ", dtype_name(post.dtype), " ", shape_str(post.shape));
  CLAWMINE_CHECK(comb.dtype == DType::kF32 && comb.numel() == T * hc * hc, "cuda hc_post: comb must be [", T, ", ", hc,
                 ", ", hc, "] F32, got ", dtype_name(comb.dtype), " ", shape_str(comb.shape));
  CLAWMINE_CHECK(X_out.dtype == DType::kF32 && X_out.numel() == T * hc * D, "cuda hc_post: X_out must be [", T, ", ",
                 hc, ", ", D, "] F32, got ", dtype_name(X_out.dtype), " ", shape_str(X_out.shape));
  const auto* xb = static_cast<const char*>(X.data);
  const auto* ob = static_cast<const char*>(X_out.data);
  CLAWMINE_CHECK(ob + X_out.nbytes() <= xb || xb + X.nbytes() <= ob, "cuda hc_post: X_out must not overlap X");
  return {T, hc, D};
}

// PDL for the decode site kernel, which loads its mix weights before griddepcontrol.wait: with
// every launch's (pdl_enabled(), the default) or alone (CLAWMINE_PDL=0; then CLAWMINE_HC_PDL=0
// turns it off too). Its blocks start while the kernel before (a GEMV or the combine) drains, so
// the 1.5 MB of fn are on their way when its outputs are complete (docs/PERFORMANCE.md, seventh
// session).
bool hc_site_pdl() {
  static const bool on = env_switch("CLAWMINE_HC_PDL", true);
  return pdl_enabled() || on;
}

// The decode site's tagged partial slots (hc_site_fused_kernel: [kFusedMaxT, kSiteMaxS, kMix + 1]
// 64-bit words) and its per-token tags, kept per backend: tags only grow, so the slots are never
// cleared after the first use.
const char kSiteSlotsKey = 0, kSiteEpochsKey = 0;  // their addresses key the state

// How many tokens one site launch takes: a finisher polls until its writers have run, so the
// finishers of a launch stay at most half the blocks the device holds at once (one 288-thread
// block per multiprocessor: on an H100 or H200 every token of kFusedMaxT, 64 of 132, in one
// launch). One token needs no check; the device's count is asked once per kernel and backend.
struct SiteResident {
  int64_t blocks = 0;  // 0 until asked
};
int64_t site_tokens_per_launch(CudaBackend& be, const void* kernel, int64_t T) {
  if (T <= 1) return 1;
  SiteResident* r = be.op_state<SiteResident>(kernel);
  if (r->blocks == 0) {
    int per_sm = 0;
    CLAWMINE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kSiteThreads, 0));
    r->blocks = std::max<int64_t>(1, static_cast<int64_t>(per_sm) * std::max(1, be.sm_count()));
  }
  return std::clamp<int64_t>(r->blocks / 2, 1, T);
}

// hc_post_pre at decode (T <= kFusedMaxT): one hc_site_fused_kernel per token group, grid
// (tokens, S + 1): S writers as hc_pre's fused kernel (so the mix partials, their sum and every
// later step match it bit for bit) and one finisher per token.
template <int HC>
void hc_site_fused(CudaBackend& be, const TensorView& y, const TensorView& y_add, const TensorView& X,
                   const TensorView& post, const TensorView& comb, const TensorView& X_out,
                   const HyperConnectionWeights& w, const HcParams& p, const HcNorm& norm, const TensorView& x_in,
                   const TensorView& post_out, const TensorView& comb_out) {
  constexpr int kMix = mix_count<HC, false>();
  const int64_t T = X.dim(0), D = X.dim(2), n = HC * D;
  const int64_t S = (n + kFusedChunk - 1) / kFusedChunk;
  static_assert(HC == 4, "kSiteMaxS counts 4 streams");
  CLAWMINE_CHECK(S <= kSiteMaxS && T <= kFusedMaxT, "cuda hc_post_pre: X ", shape_str(X.shape),
                 " exceeds the decode site");
  const HcScalars scalars = hc_scalars(w, p, "hc_post_pre");
  auto* slots = reinterpret_cast<unsigned long long*>(
      be.zeroed_counters(&kSiteSlotsKey, 2 * kFusedMaxT * kSiteMaxS * (kMix + 1)));
  unsigned* epochs = be.zeroed_counters(&kSiteEpochsKey, kFusedMaxT);
  dispatch_float(w.fn.dtype, "hc_post_pre", "fn", [&](auto tf) {
    using Tf = decltype(tf);
    dispatch_float(x_in.dtype, "hc_post_pre", "x_in", [&](auto tx) {
      using Tx = decltype(tx);
      auto* kernel = hc_site_fused_kernel<HC, Tf, Tx>;
      const int64_t group = site_tokens_per_launch(be, reinterpret_cast<const void*>(kernel), T);
      for (int64_t t0 = 0; t0 < T; t0 += group) {
        const int64_t nt = std::min(group, T - t0);
        const dim3 grid(static_cast<unsigned>(nt), static_cast<unsigned>(S + 1));
        launch_kernel_pdl(hc_site_pdl(), kernel, grid, kSiteThreads, 0, be.stream(), y.as<const Tx>() + t0 * D,
                          y_add.data ? y_add.as<const Tx>() + t0 * D : nullptr, X.f32() + t0 * n,
                          static_cast<const float*>(post.f32()) + t0 * HC,
                          static_cast<const float*>(comb.f32()) + t0 * HC * HC, X_out.f32() + t0 * n,
                          w.fn.as<const Tf>(), D, slots + t0 * kSiteMaxS * (kMix + 1), epochs + t0, scalars, norm,
                          x_in.as<Tx>() + t0 * D, post_out.f32() + t0 * HC, comb_out.f32() + t0 * HC * HC);
        CLAWMINE_CUDA_LAUNCHED("hc site fused");
      }
    });
  });
}

// hc_post_pre at prefill when post_mix_fits: hc_post_mix_tile_kernel (X_out and the mix
// partials in one pass over the streams), then hc_finish_norm_kernel (the split sums in order,
// the gates, the collapse of X_out and the norm into x_in).
template <int HC>
void hc_post_mix_and_finish(CudaBackend& be, const TensorView& y, const TensorView& X, const TensorView& post,
                            const TensorView& comb, const TensorView& X_out, const HyperConnectionWeights& w,
                            const HcParams& p, const HcNorm& norm, const TensorView& x_in,
                            const TensorView& post_out, const TensorView& comb_out) {
  constexpr int kMix = mix_count<HC, false>();
  const int64_t T = X.dim(0), D = X.dim(2);
  const int64_t chunk = post_mix_chunk(be, T, D), S = (D + chunk - 1) / chunk;
  const int64_t tiles = (T + kPmTokens - 1) / kPmTokens;
  CLAWMINE_CHECK(S <= 65535 && tiles <= INT32_MAX, "cuda hc_post_pre: X ", shape_str(X.shape), " exceeds the grid");
  ops::ScratchFrame frame(be);
  const TensorView partial = be.scratch(DType::kF32, {T, S, kMix + 1});
  const HcScalars scalars = hc_scalars(w, p, "hc_post_pre");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(S));
  dispatch_float(w.fn.dtype, "hc_post_pre", "fn", [&](auto tf) {
    using Tf = decltype(tf);
    dispatch_float(y.dtype, "hc_post_pre", "y", [&](auto ty) {
      using Ty = decltype(ty);
      launch_kernel(hc_post_mix_tile_kernel<HC, Tf, Ty>, grid, 32 * kPmWarps, 0, be.stream(), y.as<const Ty>(),
                    static_cast<const float*>(X.f32()), static_cast<const float*>(post.f32()),
                    static_cast<const float*>(comb.f32()), X_out.f32(), w.fn.as<const Tf>(), static_cast<int>(T),
                    static_cast<int>(D), static_cast<int>(chunk), partial.f32());
      CLAWMINE_CUDA_LAUNCHED("hc post mix tile");
    });
  });
  dispatch_float(x_in.dtype, "hc_post_pre", "x_in", [&](auto to) {
    using To = decltype(to);
    launch_kernel(hc_finish_norm_kernel<HC, To>, static_cast<unsigned>(T), kThreads, 0, be.stream(),
                  static_cast<const float*>(X_out.f32()), static_cast<const float*>(partial.f32()),
                  static_cast<int>(S), D, scalars, norm, x_in.as<To>(), post_out.f32(), comb_out.f32());
    CLAWMINE_CUDA_LAUNCHED("hc finish norm");
  });
}

}  // namespace

void CudaBackend::hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                         const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  const auto [T, hc, D] = check_pre(*this, X, w, p, x_in, post, comb);
  if (T == 0) return;
  CLAWMINE_CHECK(D > 0, "cuda hc_pre: X has no hidden dims");
  hc_dispatch(hc, "hc_pre", [&](auto hc_c) {
    hc_mix_and_finish<decltype(hc_c)::value, false>(*this, X, w, p, x_in, post.f32(), comb.f32(), "hc_pre");
  });
}

void CudaBackend::hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                          const TensorView& y) {
  const auto [T, hc, D] = check_streams(*this, X, p.hc_mult, "hc_head");
  check_weights(*this, w, hc, hc * D, 1, "hc_head");
  expect_device(y, "hc_head", "y");
  CLAWMINE_CHECK(y.numel() == T * D, "cuda hc_head: y ", shape_str(y.shape), " does not hold [", T, ", ", D, "]");
  if (T == 0) return;
  CLAWMINE_CHECK(D > 0, "cuda hc_head: X has no hidden dims");
  hc_dispatch(hc, "hc_head", [&](auto hc_c) {
    hc_mix_and_finish<decltype(hc_c)::value, true>(*this, X, w, p, y, nullptr, nullptr, "hc_head");
  });
}

void CudaBackend::hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                          const TensorView& X_out) {
  const HcShape sh = check_post(*this, y, X, post, comb, X_out);
  const int64_t T = sh.T, hc = sh.hc, D = sh.D;
  if (T == 0 || D == 0) return;
  hc_dispatch(hc, "hc_post", [&](auto hc_c) {
    constexpr int HC = decltype(hc_c)::value;
    dispatch_float(y.dtype, "hc_post", "y", [&](auto ty) {
      using Ty = decltype(ty);
      const bool packed = rowwise::packable<Ty, 4>(y.data, D) && rowwise::packable<float, 4>(X.data, D) &&
                          rowwise::packable<float, 4>(X_out.data, D);
      const int N = packed ? 4 : 1;
      // Blocks of 64 threads when 256-thread blocks would leave most SMs idle (decode).
      const int threads = T * ((D / N + kThreads - 1) / kThreads) < sm_count_ ? 64 : kThreads;
      const int64_t dblocks = (D / N + threads - 1) / threads;
      const auto blocks = static_cast<unsigned>(T * dblocks);
      if (packed) {
        launch_kernel(hc_post_kernel<HC, Ty, 4>, blocks, threads, 0, stream_, y.as<const Ty>(), X.f32(), post.f32(),
                      comb.f32(), X_out.f32(), D, dblocks);
      } else {
        launch_kernel(hc_post_kernel<HC, Ty, 1>, blocks, threads, 0, stream_, y.as<const Ty>(), X.f32(), post.f32(),
                      comb.f32(), X_out.f32(), D, dblocks);
      }
      CLAWMINE_CUDA_LAUNCHED("hc_post");
    });
  });
}

void CudaBackend::hc_post_pre(const TensorView& y, const TensorView& y_add, const TensorView& X,
                              const TensorView& post, const TensorView& comb, const TensorView& X_out,
                              const HyperConnectionWeights& w, const HcParams& p, const TensorView& norm_weight,
                              float eps, const TensorView& x_in, const TensorView& post_out,
                              const TensorView& comb_out) {
  const auto [T, hc, D] = check_post(*this, y, X, post, comb, X_out);
  if (y_add.data != nullptr) {
    expect_device(y_add, "hc_post_pre", "y_add");
    CLAWMINE_CHECK(y_add.dtype == y.dtype && y_add.numel() == y.numel(), "cuda hc_post_pre: y_add ",
                   dtype_name(y_add.dtype), " ", shape_str(y_add.shape), " does not match y ", dtype_name(y.dtype), " ",
                   shape_str(y.shape));
  }
  check_pre(*this, X_out, w, p, x_in, post_out, comb_out);
  expect_device(norm_weight, "hc_post_pre", "norm_weight");
  CLAWMINE_CHECK(norm_weight.numel() == D, "cuda hc_post_pre: norm_weight ", shape_str(norm_weight.shape),
                 " does not have ", D, " elements");
  const rowwise::FloatCode wcode = rowwise::float_code(norm_weight.dtype, "hc_post_pre", "norm_weight");
  // The fused passes hold rows in packs (x_in in packs of 8, staged in shared memory); other
  // shapes and layouts run the composition.
  const bool packed = T > 0 && hc == 4 && D > 0 && D % 8 == 0 && D <= kNormMaxD &&
                      rowwise::packable<float, 4>(X.data, D) && rowwise::packable<float, 4>(X_out.data, D) &&
                      dtype_size(x_in.dtype) <= 4 && reinterpret_cast<uintptr_t>(x_in.data) % (8 * dtype_size(x_in.dtype)) == 0;
  const bool decode = T <= kFusedMaxT;
  const bool decode_fits = y.dtype == x_in.dtype && reinterpret_cast<uintptr_t>(y.data) % (4 * dtype_size(y.dtype)) == 0 &&
                           reinterpret_cast<uintptr_t>(y_add.data) % (4 * dtype_size(y.dtype)) == 0 &&
                           reinterpret_cast<uintptr_t>(w.fn.data) % (4 * dtype_size(w.fn.dtype)) == 0;
  if (!packed || (decode && !decode_fits)) {
    hc_post_pre_unfused(y, y_add, X, post, comb, X_out, w, p, norm_weight, eps, x_in, post_out, comb_out);
    return;
  }
  // y + y_add: in the decode kernel as it loads y; before the prefill passes, by add().
  ops::ScratchFrame frame(*this);
  TensorView ys = y;
  if (y_add.data != nullptr && !decode) {
    ys = scratch(y.dtype, y.shape);
    add(y, y_add, ys);
  }
  const int tpr = rowprep::rms_threads_per_row(D);
  HcNorm norm{norm_weight.data, wcode,
              reinterpret_cast<uintptr_t>(norm_weight.data) % (8 * rowwise::float_code_bytes(wcode)) == 0, eps, tpr};
  // The decode site stages a weight of <= kNormSmemBytes in shared memory (16-byte copies), so
  // the norm's weight reads are in flight during the collapse (H100, decode b=1: 7.52 / 7.54 ->
  // 7.48 / 7.50 ms/token; docs/PERFORMANCE.md, fourteenth session).
  const int64_t wbytes = D * static_cast<int64_t>(rowwise::float_code_bytes(wcode));
  if (wbytes <= kNormSmemBytes && wbytes % 16 == 0 && reinterpret_cast<uintptr_t>(norm_weight.data) % 16 == 0)
    norm.smem_bytes = static_cast<int>(wbytes);
  if (decode) {
    hc_site_fused<4>(*this, y, y_add, X, post, comb, X_out, w, p, norm, x_in, post_out, comb_out);
  } else if (post_mix_fits(T, hc, D, ys.data, dtype_size(ys.dtype), X.data, X_out.data, w.fn.data)) {
    hc_post_mix_and_finish<4>(*this, ys, X, post, comb, X_out, w, p, norm, x_in, post_out, comb_out);
  } else {
    hc_post(ys, X, post, comb, X_out);
    hc_mix_and_finish<4, false>(*this, X_out, w, p, x_in, post_out.f32(), comb_out.f32(), "hc_post_pre", &norm);
  }
}

}  // namespace clawmine::backend::cuda
