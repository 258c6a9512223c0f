// KV compressor (spec §3.3 C; transformers-parity #17-#21). Each token contributes a projection
// a = x Wkv and gate logits b = x Wgate + ape[p mod m]; a window of m tokens becomes one entry
// by a per-channel softmax over its slots. CSA (overlap) pools 2m slots: the previous window's
// first halves and the current window's second halves (ops::Backend::compress_chunk carries
// the state). Entries are RMS-normed, rotated at the window's first position j*m, and
// (official mode) round-tripped like the reference, then stored in the cache's entry rows at
// rows the device computes from the positions (so a decode step's ops are the same every step).
// Ops: linear_multi (wkv, wgate: compressor_project, row-wise), compress_store (compress_chunk ->
// norm_rope_qdq -> scatter_rows: compressor_store, one sequence's chunk).
#include "model/deepseek_v4/layer.h"

namespace clawmine::model::deepseek_v4 {

TensorView compressor_project(const LayerContext& c, const TensorView& h, const CompressorWeights& w,
                              const CompressorSpec& spec) {
  const int64_t T = h.dim(0), width = (spec.overlap ? 2 : 1) * spec.head_dim;  // c * hd
  // kv and gate read the same h: one linear_multi (one launch on CUDA at decode sizes).
  const TensorView kv_gate = c.be.scratch(DType::kF32, {2, T, width});
  const ops::Backend::LinearJob jobs[] = {{&w.wkv, compressor_rows(kv_gate, 0, 0, T)},
                                         {&w.wgate, compressor_rows(kv_gate, 1, 0, T)}};
  c.be.linear_multi(h, jobs, 2);
  return kv_gate;
}

TensorView compressor_rows(const TensorView& kv_gate, int64_t part, int64_t begin, int64_t end) {
  return kv_gate.slice0(part, part + 1).reshaped({kv_gate.dim(1), kv_gate.dim(2)}).slice0(begin, end);
}

void compressor_store(const LayerContext& c, const TensorView& kv, const TensorView& gate, const CompressorWeights& w,
                      const CompressorSpec& spec, CompressorCache& st) {
  const int64_t T = kv.dim(0), m = spec.rate, hd = spec.head_dim, R = c.cfg.qk_rope_head_dim;
  // One entry per window the chunk touches (j = p0/m .. (p0+T-1)/m); the last may be incomplete
  // (its entry so far, replaced when the window completes; never attended before that).
  const int64_t n_out = (c.p0 + T - 1) / m - c.p0 / m + 1;
  const TensorView pooled = c.be.scratch(DType::kF32, {n_out, hd});
  const TensorView entry_positions = c.be.scratch(DType::kI32, {n_out});  // j*m, the window's first position
  CLAWMINE_CHECK(st.capacity() >= (c.p0 + T - 1) / m + 1, "compressor entries of layer ", c.layer, " hold ",
                 st.capacity(), " rows, need ", (c.p0 + T - 1) / m + 1);
  // compress_chunk, norm_rope_qdq of the pooled rows at their window starts, scatter_rows to
  // entry row j = (j*m) / m: one op (one launch on CUDA at decode sizes).
  c.be.compress_store(kv, gate, w.ape, c.positions, m, spec.overlap, st.state(),
                      {.norm = true,
                       .norm_weight = &w.norm,
                       .eps = static_cast<float>(c.cfg.rms_norm_eps),
                       .rope_dim = R,
                       .qdq = spec.qdq,
                       .n_nope = hd - R},
                      c.inv_freq, pooled, entry_positions, st.entries.view());
}

void compressor_step(const LayerContext& c, const TensorView& h, const CompressorWeights& w,
                     const CompressorSpec& spec, CompressorCache& st) {
  const TensorView kv_gate = compressor_project(c, h, w, spec);
  const int64_t T = h.dim(0);
  compressor_store(c, compressor_rows(kv_gate, 0, 0, T), compressor_rows(kv_gate, 1, 0, T), w, spec, st);
}

}  // namespace clawmine::model::deepseek_v4
