// The narrow op interface between the model and a device. The model code (model/deepseek_v4)
// expresses the maths with these ops only; backend/cpu is the float32 reference that
// implements every op plainly, backend/cuda implements the same names (and may fuse behind
// them). Activations are F32 on the CPU backend. Shapes use the config's vocabulary:
// T tokens, D hidden, H heads, Dh head_dim, hc hyper-connection streams, E experts, K top-k.
// Tensor arguments are contiguous views in the backend's device memory; outputs are written,
// never read (poisoned in tests). Ops are issued in order (CUDA: on one stream) and need no
// host synchronization: every size follows from host-known counts, and what changes from one
// decode step to the next (positions, entry rows) is read on the device, so a step's ops can be
// replayed unchanged (decode-step graphs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/deepseek_v4/weights.h"

namespace clawmine::ops {

using model::deepseek_v4::ExpertWeights;
using model::deepseek_v4::HyperConnectionWeights;
using model::deepseek_v4::LinearWeight;

struct HcParams {
  int64_t hc_mult = 4;
  int64_t sinkhorn_iters = 20;
  float hc_eps = 1e-6f;
  float rms_eps = 1e-6f;  // the unweighted RMS over the flattened streams uses rms_norm_eps
};

// How quantized linears treat activations (issue: quantized checkpoints). W4A16/W8A16 dequantize
// weights exactly and keep activations; W8A8 quantizes activations per token per 128 to E4M3
// with power-of-two (UE8M0) scales as the release does (FP8-block and MXFP4 linears); W4A4
// emulates a Blackwell NVFP4 GEMM: activations to E2M1 with E4M3 scales per 16 under a global
// scale g that is static (1/input_scale), dynamic (2688/amax per token) or auto (dynamic unless
// the weight's input_scale is present and trusted). Every conversion saturates; saturate=false
// (diagnostics and tests only) reproduces a non-saturating E4M3 cast and so its NaN.
enum class Nvfp4Path { kW4A16, kW4A4 };
enum class Fp8Path { kW8A16, kW8A8 };
enum class ActScale { kStatic, kDynamic, kAuto };
struct LinearPolicy {
  Nvfp4Path nvfp4 = Nvfp4Path::kW4A16;
  Fp8Path fp8 = Fp8Path::kW8A16;
  ActScale act_scale = ActScale::kAuto;
  bool saturate = true;
};

// Which of the official inference code's quantize-dequantize round trips an op applies
// (spec §3.0; quant/qdq.h): FP8 E4M3 per 64 (UE8M0 scales) on the first n dims of each row
// (KV nope dims, compressed entries), or a Walsh-Hadamard rotation then FP4 E2M1 per 32 on the
// whole row (indexer q and keys).
enum class Qdq { kNone, kFp8Nope, kHadamardFp4 };

// A compressor's carried state (spec §4.3), in device memory of the backend that runs it.
// pending_* hold the rows of the incomplete current window (positions p0 - p0 % m .. p0 - 1 for
// a chunk starting at p0); overlap_* (CSA only, else empty) hold the first halves of the last
// complete window. Every row count follows from the position alone, so no counts are stored.
struct CompressorStateView {
  TensorView pending_kv;    // [m, c*hd]
  TensorView pending_gate;  // [m, c*hd] gate logits, position bias included
  TensorView overlap_kv;    // [m, hd]  (CSA)
  TensorView overlap_gate;  // [m, hd]  (CSA)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Where this backend's tensors live. Every tensor argument of an op must be on this device
  // (weights included: Model::place puts them there); host vectors never cross the interface
  // except through upload/download.
  virtual Device device() const { return Device::kCpu; }
  // The dtype of activations between ops (F32 on the CPU; F32 or BF16 on CUDA,
  // `--act-dtype`). Residual streams, router/softmax/score tensors and logits stay F32;
  // every op accepts F32 and act_dtype() for its activation arguments and writes the dtype of
  // the output view it is given.
  virtual DType act_dtype() const { return DType::kF32; }

  // ---- Memory ----------------------------------------------------------------------------
  // Long-lived memory (caches, placed weights) until release(); contents undefined.
  virtual TensorView allocate(DType dtype, const Shape& shape) = 0;
  virtual void release(const TensorView& view) = 0;
  // Scratch memory for one forward pass: a bump region. scratch_mark()/scratch_reset(mark)
  // bracket a pass (or a layer); views handed out after the mark are invalid after the reset.
  // For equal sequences of requests the same addresses come back (CUDA graphs rely on it).
  virtual TensorView scratch(DType dtype, const Shape& shape) = 0;
  virtual size_t scratch_mark() const = 0;
  virtual void scratch_reset(size_t mark) = 0;
  // Host <-> device: dst.nbytes() bytes from host memory `src` (ordered with later ops, the
  // source may be reused as soon as the call returns); download waits for all earlier ops.
  virtual void upload(const void* src, const TensorView& dst) = 0;
  virtual void download(const TensorView& src, void* dst) = 0;
  // dst = src (same element count; device to device), converting between F32, BF16 and F16
  // (round to nearest even) when the dtypes differ; other dtypes must match. fill: every
  // element = value (float dtypes).
  virtual void copy(const TensorView& src, const TensorView& dst) = 0;
  virtual void fill(const TensorView& dst, float value) = 0;
  // Waits until every op issued so far has finished (CPU: no-op).
  virtual void synchronize() {}
  // Decode-step graphs (CUDA graphs; --cuda-graphs). A step is named by a key that the caller
  // derives from everything that shapes its ops (tensor addresses and sizes, counts); values
  // that change from step to step (token ids, positions) are read by the ops from device
  // tensors uploaded before the step. replay_step_graph(key) launches the graph recorded under
  // `key` and returns true, and the caller then issues none of the step's ops; it returns false
  // when there is none, and the caller issues the ops between begin_step_graph(key) and
  // end_step_graph(), which may record them under `key` (and runs them). In between, nothing is
  // read back to the host and nothing is uploaded. Results equal eager execution bit for bit.
  // Backends without graphs, and diagnostic decorators (which read tensors between ops), never
  // replay and ignore begin/end.
  // retire_step_graph(key), before a begin_step_graph: the owner's next step has another key (its
  // cache grew, its batch changed members), so the graph recorded under `key` is not expected to be
  // replayed (a grown cache's never is) and a backend may re-record the next step into it instead
  // of building a new one; a retired key that comes back is recorded anew.
  virtual bool replay_step_graph(uint64_t key) { return false; }
  virtual void retire_step_graph(uint64_t key) {}
  virtual void begin_step_graph(uint64_t key) {}
  virtual void end_step_graph() {}

  // Applies to every later linear, grouped_linear and expert projection.
  virtual void set_linear_policy(const LinearPolicy& policy) { policy_ = policy; }
  const LinearPolicy& linear_policy() const { return policy_; }

  // Names the model sub-step the next ops belong to ("layers.0.attn", "layers.3.ffn", "head"),
  // for diagnostics (diag/trace.h); compute backends ignore it. The view is copied if kept.
  virtual void set_scope(std::string_view scope) {}

  // Concurrency at decode sizes. branch(b) sends the ops issued after it to branch b (0: the
  // main branch; 1 .. kMaxBranches-1: side branches, each starting after every op issued on
  // branch 0 before its own first op of the region, its fork); ops of different branches may run
  // at the same time until join_branches(), after which every op follows all of them. The caller
  // keeps the branches independent: no op of one reads or writes what an op of another writes
  // before the join, except that a side branch may read what branch 0 wrote before its fork
  // (CSA's selection branch reads the indexer queries that branch 0 computed), and that after
  // branch_wait(b) the current branch's ops follow every op issued on branch b so far in the
  // region (b = 0, or a side branch forked in it; one never forked has nothing to wait for), so
  // they may read what those wrote (the selection reads the indexer keys' branch). While a branch
  // is open, scratch_reset keeps what was handed out (no scratch is reused across branches); a
  // reset after the join frees it. Results are those of the same ops issued in order. The default
  // (CPU, diagnostic decorators) runs everything in order.
  static constexpr int kMaxBranches = 9;
  virtual void branch(int b) {}
  // branch(b) for a branch whose first op should start as soon as its fork allows. After a plain
  // branch(b) a backend may start it later (CUDA graphs: a side branch's first kernel after a fork
  // also waits for that branch's previous kernel, which makes it a join that launches ~1.8 us
  // late; for some branches that delay pays: branches.cu). Results are the same either way.
  virtual void branch_early(int b) { branch(b); }
  virtual void branch_wait(int b) {}
  virtual void join_branches() {}

  // ---- Ops ---------------------------------------------------------------------------------
  // out[t, :] = table[ids[t], :].  table [V, D] (BF16/F32/F16), ids [T] I32, out [T, D].
  // An id outside [0, V) is an error naming it (CUDA: reported at the next synchronizing call).
  virtual void embed(const TensorView& table, const TensorView& ids, const TensorView& out) = 0;
  // X[t, j, :] = e[t, :] for every stream j.  e [T, D]; X [T, hc, D] F32.
  virtual void hc_expand(const TensorView& e, const TensorView& X) = 0;

  // out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight  (weight null: weightless).
  // x, out [rows, n] (views of any rank: the last dim is n); weight [n] any float dtype. out may alias x.
  virtual void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) = 0;

  // out = x @ W^T.  x [T, in], out [T, out]; W dequantized exactly per w.format.
  virtual void linear(const TensorView& x, const LinearWeight& w, const TensorView& out) = 0;

  // Several projections of the same x (a compressor's wkv and wgate): outs[i] = x @ ws[i]^T for
  // every job {w, out} of jobs[0, n_jobs) exactly as linear(x, *w, out) computes it, in order. The default issues
  // the linears one by one (decorators see them so); a backend may run them as one launch with
  // the same results.
  struct LinearJob {
    const LinearWeight* w = nullptr;
    TensorView out;
  };
  virtual void linear_multi(const TensorView& x, const LinearJob* jobs, int64_t n_jobs) {
    for (int64_t i = 0; i < n_jobs; ++i) linear(x, *jobs[i].w, jobs[i].out);
  }

  // Block-diagonal grouped projection (wo_a): W = w viewed [G, Lo, in_g];
  // out[t, g, :] = W[g] @ x[t, g, :].  x [T, G, in_g], out [T, G, Lo].
  virtual void grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) = 0;

  // In place: interleaved-pair RoPE on the trailing rope_dim dims of every vector.
  // x [T, n_vec, dim]; positions [T] I32; inv_freq [rope_dim/2] F32.
  // angle(t, i) = float(inv_freq[i] * float(positions[t])) computed in float32 (transformers-parity #14);
  // pair i = (x[dim-rope_dim+2i], x[dim-rope_dim+2i+1]): (a, b) -> (a cos - b sin, a sin + b cos);
  // inverse uses -sin.
  virtual void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
                    bool inverse) = 0;
  // out[i] = start + i * step  (out [n] I32): positions of a chunk or of compressed entries.
  virtual void iota(const TensorView& out, int64_t start, int64_t step) = 0;

  // out = a + b, elementwise, same shapes. out may alias a or b.
  virtual void add(const TensorView& a, const TensorView& b, const TensorView& out) = 0;

  // In place: the official round trip `kind` on every row of x [rows, width]; kFp8Nope acts on
  // the first n_nope dims of each row, kHadamardFp4 on the whole row.
  virtual void qdq(const TensorView& x, Qdq kind, int64_t n_nope) = 0;

  // The per-vector preparation of queries, keys and compressed entries (spec §3.3 A, C, E), in
  // place on x [T, n_vec, dim]: rms_norm over dim (when p.norm; weight p.norm_weight or none),
  // then rope on the trailing p.rope_dim at positions[t] (when > 0), then qdq(p.qdq, p.n_nope)
  // (when not kNone). Defined as exactly that composition of the three ops, x rounded to its
  // dtype after each; a backend may run it as one pass with the same results. The default
  // issues the three ops, so decorators (tracer, recorder, profiler) see them one by one.
  struct VecPrep {
    bool norm = false;
    const TensorView* norm_weight = nullptr;
    float eps = 1e-6f;
    int64_t rope_dim = 0;
    Qdq qdq = Qdq::kNone;
    int64_t n_nope = 0;
  };
  virtual void norm_rope_qdq(const TensorView& x, const VecPrep& p, const TensorView& positions,
                             const TensorView& inv_freq) {
    norm_rope_qdq_unfused(x, p, positions, inv_freq);
  }
  void norm_rope_qdq_unfused(const TensorView& x, const VecPrep& p, const TensorView& positions,
                             const TensorView& inv_freq) {
    CLAWMINE_CHECK(x.rank() == 3, "norm_rope_qdq: x must be [T, n_vec, dim], got rank ", x.rank());
    const TensorView rows = x.reshaped({x.dim(0) * x.dim(1), x.dim(2)});
    if (p.norm) rms_norm(rows, p.norm_weight, p.eps, rows);
    if (p.rope_dim > 0) rope(x, positions, inv_freq, p.rope_dim, false);
    if (p.qdq != Qdq::kNone) qdq(rows, p.qdq, p.n_nope);
  }

  // Manifold-constrained hyper-connection pre-mix (spec §3.2):
  //   r = rsqrt(mean(X[t]^2 over hc*D) + rms_eps); mix = (X[t] flattened @ fn^T) * r      [(2+hc)*hc]
  //   pre[j] = sigmoid(mix[j]*scale[0] + base[j]) + hc_eps
  //   post[j] = 2*sigmoid(mix[hc+j]*scale[1] + base[hc+j])
  //   C[j][k] = softmax_k(mix[2hc + hc*j + k]*scale[2] + base[2hc + hc*j + k]) + hc_eps,
  //   then column-normalize, then (sinkhorn_iters-1) x (row-normalize, column-normalize), each /(sum + hc_eps)
  //   x_in[t, d] = sum_j pre[j] * X[t, j, d]
  // X [T, hc, D] F32; x_in [T, D]; post [T, hc] F32; comb [T, hc, hc] F32 (row-major [j][k]).
  virtual void hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& x_in,
                      const TensorView& post, const TensorView& comb) = 0;
  // X_out[t, k, d] = post[t, k] * y[t, d] + sum_j comb[t, j, k] * X[t, j, d]   (note: comb transposed)
  // y [T, D]; X, X_out [T, hc, D] F32 (X_out must not alias X).
  virtual void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                       const TensorView& X_out) = 0;
  // One hyper-connection site between two sub-layers (spec §3.2): the streams out of the sub-layer
  // before, then the pre-mix and input norm of the sub-layer after:
  //   hc_post(y, X, post, comb, X_out);  hc_pre(X_out, w, p, x_in, post_out, comb_out);
  //   rms_norm(x_in, norm_weight, eps, x_in)
  // With y_add (not empty: same shape and dtype as y) the sub-layer's output is add(y, y_add)
  // (the MoE's routed and shared experts), into scratch first. Defined as exactly that composition
  // (x_in rounded to its dtype before the norm); a backend may run it as fewer passes over X_out
  // with the same results. post_out, comb_out may be post, comb (each token's are read before they
  // are written); X_out must not alias X. The default issues the ops one by one, so decorators
  // (tracer, recorder, profiler) see them so.
  virtual void hc_post_pre(const TensorView& y, const TensorView& y_add, const TensorView& X, const TensorView& post,
                           const TensorView& comb, const TensorView& X_out, const HyperConnectionWeights& w,
                           const HcParams& p, const TensorView& norm_weight, float eps, const TensorView& x_in,
                           const TensorView& post_out, const TensorView& comb_out) {
    hc_post_pre_unfused(y, y_add, X, post, comb, X_out, w, p, norm_weight, eps, x_in, post_out, comb_out);
  }
  void hc_post_pre_unfused(const TensorView& y, const TensorView& y_add, const TensorView& X, const TensorView& post,
                           const TensorView& comb, const TensorView& X_out, const HyperConnectionWeights& w,
                           const HcParams& p, const TensorView& norm_weight, float eps, const TensorView& x_in,
                           const TensorView& post_out, const TensorView& comb_out);  // below ScratchFrame
  // y[t, d] = sum_j (sigmoid(mix[j]*scale[0] + base[j]) + hc_eps) * X[t, j, d] with mix as in hc_pre
  // (fn [hc, hc*D], base [hc], scale [1]).  X [T, hc, D] F32; y [T, D].
  virtual void hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& y) = 0;

  // Key indices for sparse_attention (spec §3.3 B/D). For query t at p = positions[t]
  // (p0 = positions[0]; the chunk's positions are consecutive):
  //   slots [0, window): the window keys, rows n_prev + kp - p0 for kp = max(0, p-window+1) .. p
  //     in increasing kp (rows [0, n_prev) of the window pool hold positions p0-n_prev .. p0-1,
  //     rows [n_prev, n_prev+T) the chunk), then -1 up to slot window;
  //   slots [window, S): compressed keys, as rows of the key space after the window pool
  //     (first entry row = entry_base): HCA (selected empty): entry_base + j for
  //     j < min(n_entries, (p+1)/rate); CSA: entry_base + selected[t, i] for each selected[t, i] >= 0
  //     in order; then -1.
  // positions [T] I32; selected [T, k] I32 or empty; idx [T, S] I32.
  virtual void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                               int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) = 0;

  // Sparse attention with a per-head sink (spec §3.3 F). Keys are the rows of the virtual
  // concatenation [kv; entries] (entries may be empty): row r < kv.dim(0) is kv[r], else
  // entries[r - kv.dim(0)]. For query t and head h over rows r_s = idx[t, s] (s < S; -1 = skip):
  //   l_s = (q[t,h] . key[r_s]) * scale,
  //   out[t,h] = sum_s exp(l_s - M) key[r_s] / (sum_s exp(l_s - M) + exp(sink[h] - M)), M = max(l, sink[h]).
  // K = V = key rows. q [T, H, Dh]; kv [Nw, Dh]; entries [Ne, Dh]; idx [T, S] I32; sink [H] F32;
  // out [T, H, Dh]. A query with no valid key gets out = 0.
  virtual void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                const TensorView& idx, const TensorView& sink, float scale, const TensorView& out) = 0;
  // sparse_attention, then the inverse rope on the trailing rope_dim dims of out at positions[t]
  // (spec §3.3 F then G's rotation back). Defined as exactly that composition (out rounded to its
  // dtype in between); a backend may run it as one pass with the same results (CUDA: decode-sized
  // chunks). The default issues the two ops, so decorators see them one by one.
  // positions [T] I32; inv_freq [rope_dim / 2] F32.
  virtual void sparse_attention_rope(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                     const TensorView& idx, const TensorView& sink, float scale,
                                     const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
                                     const TensorView& out) {
    sparse_attention(q, kv, entries, idx, sink, scale, out);
    rope(out, positions, inv_freq, rope_dim, true);
  }

  // KV compressor for a chunk at consecutive positions p0 .. p0+T-1 = positions[0 .. T-1] (read
  // on the device; spec §3.3 C; parity #17-#21). kv, gate [T, c*hd] are the chunk's projections
  // (c = 2 when overlap (CSA), else 1); each gate row t first gets ape[(p0+t) % rate] added.
  // Window j covers positions [j*rate, (j+1)*rate); its entry pools, per channel d, over slots:
  //   HCA: the window's rate rows (all c*hd = hd channels);
  //   CSA: slots [0, rate) = the previous window's first halves (channels [0, hd); absent for
  //        j = 0: weight 0), slots [rate, 2*rate) = this window's second halves (channels [hd, 2hd)).
  //   pooled[n, d] = sum_s softmax_s(gate[s, d]) * kv[s, d]   (per channel, over present slots)
  // pooled [n_out, hd] gets one row per window the chunk touches, j = p0/rate .. (p0+T-1)/rate,
  // n_out = (p0+T-1)/rate - p0/rate + 1 (one row for a decode step). A window still incomplete at
  // p0+T-1 pools only its rows up to there (slots at later positions are absent): its entry so
  // far, which the complete entry replaces once the window completes. entry_positions [n_out] I32
  // gets j*rate, each row's window start (its RoPE position). Rows of a window before p0 come from
  // state.pending; afterwards state holds the chunk's incomplete tail and (CSA) the first halves
  // of the last window completed (state rows are left as they were when no window completes).
  // ape [rate, c*hd] F32.
  virtual void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                              const TensorView& positions, int64_t rate, bool overlap,
                              const CompressorStateView& state, const TensorView& pooled,
                              const TensorView& entry_positions) = 0;
  // A compressor step's entries (model/deepseek_v4/compressor.cpp): compress_chunk(kv, gate, ape,
  // positions, rate, overlap, state, pooled, entry_positions), then norm_rope_qdq(pooled as
  // [n_out, 1, hd], prep, entry_positions, inv_freq), then scatter_rows(pooled, entry_positions,
  // rate, entries): every output (state, pooled after the preparation, entry_positions, entry
  // rows) as that composition writes it. The default issues the three ops; a backend may run
  // them as one pass with the same results.
  virtual void compress_store(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                              const TensorView& positions, int64_t rate, bool overlap,
                              const CompressorStateView& state, const VecPrep& prep, const TensorView& inv_freq,
                              const TensorView& pooled, const TensorView& entry_positions,
                              const TensorView& entries) {
    compress_store_unfused(kv, gate, ape, positions, rate, overlap, state, prep, inv_freq, pooled, entry_positions,
                           entries);
  }
  void compress_store_unfused(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                              const TensorView& positions, int64_t rate, bool overlap,
                              const CompressorStateView& state, const VecPrep& prep, const TensorView& inv_freq,
                              const TensorView& pooled, const TensorView& entry_positions,
                              const TensorView& entries) {
    compress_chunk(kv, gate, ape, positions, rate, overlap, state, pooled, entry_positions);
    CLAWMINE_CHECK(pooled.rank() == 2, "compress_store: pooled must be [n_out, hd], got rank ", pooled.rank());
    norm_rope_qdq(pooled.reshaped({pooled.dim(0), 1, pooled.dim(1)}), prep, entry_positions, inv_freq);
    scatter_rows(pooled, entry_positions, rate, entries);
  }

  // dst[keys[i] / divisor, :] = src[i, :] for every row i (for example compressed entries stored
  // at their window start position / rate). src [n, w]; keys [n] I32 >= 0; dst [N, w]; dtypes
  // convert as in copy(). A row outside [0, N) is an error naming it (CUDA: at the next download).
  virtual void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor,
                            const TensorView& dst) = 0;

  // Lightning-indexer scores (spec §3.3 E, transformers-parity #24):
  //   scores[t, j] = sum_h relu(q[t,h] . keys[j]) * weights[t, h] * weight_scale
  //   for j < min(N, (positions[t]+1)/rate), else -inf.
  // q [T, Hi, Di]; keys [N, Di]; weights [T, Hi]; positions [T] I32; scores [T, N] F32.
  virtual void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                              float weight_scale, const TensorView& positions, int64_t rate,
                              const TensorView& scores) = 0;

  // Per row: the indices of the k largest finite values, largest first; ties go to the lower
  // index (a documented deterministic rule); -inf and NaN entries are never picked (their slots
  // get -1). values [T, N] F32; out [T, k] I32.
  virtual void topk(const TensorView& values, int64_t k, const TensorView& out) = 0;

  // Greedy tokens where the logits are (only the ids go to the host): per row of values [R, N]
  // F32 (N >= 1), the index of its largest value, ties to the lower index, when every value of
  // the row is finite; otherwise -1 - j, j the index of the row's first NaN or Inf, so a
  // non-finite row never yields a token and the caller can name the entry. out [R] I32.
  virtual void argmax_rows(const TensorView& values, const TensorView& out) = 0;

  // MoE routing (spec §3.4): a = sqrt(softplus(logits)); selection = tid2eid[ids[t]] (hash,
  // when tid2eid is given) or top-k of a + bias (routed; ties -> lower expert id);
  // weights = a[sel] / (sum a[sel] + 1e-20) * routed_scaling.
  // logits [T, E] F32; bias [E] F32 or empty; tid2eid [V, K] I32/I64 or empty; ids [T] I32;
  // idx [T, K] I32; weight [T, K] F32.
  virtual void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                         const TensorView& ids, float routed_scaling, const TensorView& idx,
                         const TensorView& weight) = 0;
  // The router and the route in one: logits = x @ gate^T as linear(x, gate, logits), then
  // moe_route(logits, ...) into idx and weight. x [T, D]; gate [E, D]; logits [T, E] F32; the rest
  // as moe_route. The default issues the two ops (decorators see them so); a backend may compute
  // both in one launch, its logits within the linear's tolerance and idx and weight exactly what
  // moe_route gives for those logits.
  virtual void moe_router(const TensorView& x, const LinearWeight& gate, const TensorView& bias,
                          const TensorView& tid2eid, const TensorView& ids, float routed_scaling,
                          const TensorView& logits, const TensorView& idx, const TensorView& weight) {
    linear(x, gate, logits);
    moe_route(logits, bias, tid2eid, ids, routed_scaling, idx, weight);
  }

  // Routed experts: out[t] = sum_k weight[t,k] * expert_{idx[t,k]}(x[t]) summed in ascending
  // expert id, where expert(x) = w2( silu(min(x@w1^T, limit)) * clamp(x@w3^T, -limit, limit) ).
  // x [T, D]; idx, weight [T, K]; out [T, D].  A duplicated expert id counts once per occurrence.
  virtual void moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                           const TensorView& weight, float swiglu_limit, const TensorView& out) = 0;
  // One SwiGLU MLP with the same clamp (the shared expert): out = expert(x).  x [T, D]; out [T, D].
  virtual void swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) = 0;

 protected:
  LinearPolicy policy_;
};

// RAII for Backend::allocate: releases on destruction; move-only. The backend must outlive it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& be, DType dtype, const Shape& shape) : be_(&be), view_(be.allocate(dtype, shape)) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept : be_(o.be_), view_(o.view_) { o.be_ = nullptr; o.view_ = {}; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      view_ = o.view_;
      o.be_ = nullptr;
      o.view_ = {};
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }
  const TensorView& view() const { return view_; }
  void reset() {
    if (be_ && !view_.empty()) be_->release(view_);
    be_ = nullptr;
    view_ = {};
  }

 private:
  Backend* be_ = nullptr;
  TensorView view_;
};

// Joins the backend's branches at destruction: a no-op where the code joined them itself, and
// after an op failed inside a branch it closes them, so that a ScratchFrame declared before it
// (destroyed after it) frees its scratch again (resets are held while a branch is open).
class BranchScope {
 public:
  explicit BranchScope(Backend& be) : be_(be) {}
  BranchScope(const BranchScope&) = delete;
  BranchScope& operator=(const BranchScope&) = delete;
  ~BranchScope() {
    try {
      be_.join_branches();
    } catch (...) {  // a device error: the next op or synchronize reports it
    }
  }

 private:
  Backend& be_;
};

// Scratch views taken after construction are returned at destruction (Backend::scratch_mark).
class ScratchFrame {
 public:
  explicit ScratchFrame(Backend& be) : be_(be), mark_(be.scratch_mark()) {}
  ScratchFrame(const ScratchFrame&) = delete;
  ScratchFrame& operator=(const ScratchFrame&) = delete;
  ~ScratchFrame() { be_.scratch_reset(mark_); }

 private:
  Backend& be_;
  size_t mark_;
};

inline void Backend::hc_post_pre_unfused(const TensorView& y, const TensorView& y_add, const TensorView& X,
                                         const TensorView& post, const TensorView& comb, const TensorView& X_out,
                                         const HyperConnectionWeights& w, const HcParams& p,
                                         const TensorView& norm_weight, float eps, const TensorView& x_in,
                                         const TensorView& post_out, const TensorView& comb_out) {
  ScratchFrame frame(*this);
  TensorView out = y;
  if (y_add.data != nullptr) {
    out = scratch(y.dtype, y.shape);
    add(y, y_add, out);
  }
  hc_post(out, X, post, comb, X_out);
  hc_pre(X_out, w, p, x_in, post_out, comb_out);
  rms_norm(x_in, &norm_weight, eps, x_in);
}

std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0);  // 0: hardware concurrency

}  // namespace clawmine::ops
