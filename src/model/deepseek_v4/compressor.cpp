// KV compressor (spec §3.3 C; transformers-parity #17-#21). Each token contributes a projection
// a = x Wkv and gate logits b = x Wgate + ape[p mod m]; a window of m tokens becomes one entry
// by a per-channel softmax over its slots. CSA (overlap) pools 2m slots: the previous window's
// first halves and the current window's second halves. Entries are RMS-normed, rotated at the
// window's first position j*m, and (official mode) round-tripped like the reference.
#include <cmath>
#include <limits>

#include "model/deepseek_v4/layer.h"
#include "quant/qdq.h"

namespace clawmine::model::deepseek_v4 {

void apply_qdq(CompressorSpec::Qdq qdq, float* x, int64_t rows, int64_t width, int64_t n_nope) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * width;
    switch (qdq) {
      case CompressorSpec::Qdq::kNone: break;
      case CompressorSpec::Qdq::kFp8Nope: quant::fp8_qdq_blocks(row, n_nope, 64); break;
      case CompressorSpec::Qdq::kHadamardFp4:
        quant::hadamard_inplace(row, width);
        quant::fp4_qdq_blocks(row, width, 32);
        break;
    }
  }
}

void compressor_step(const LayerContext& c, const TensorView& h, const CompressorWeights& w,
                     const CompressorSpec& spec, CompressorState& st) {
  const int64_t T = h.dim(0), m = spec.rate, hd = spec.head_dim;
  const int64_t width = (spec.overlap ? 2 : 1) * hd;  // c * hd
  Buffer kv(DType::kF32, {T, width}), gate(DType::kF32, {T, width});
  c.be.linear(h, w.wkv, kv.view());
  c.be.linear(h, w.wgate, gate.view());

  st.pending_kv.width = st.pending_gate.width = width;
  st.overlap_kv.width = st.overlap_gate.width = hd;
  st.entries.width = hd;

  // Slots of the windows this chunk completes: [n_done, slots, hd].
  const int64_t slots = spec.overlap ? 2 * m : m;
  std::vector<float> slot_kv, slot_gate;
  std::vector<int64_t> entry_positions;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t p = c.positions[t];
    float* g = gate.f32() + t * width;
    const float* ape = w.ape.as<float>() + (p % m) * width;
    for (int64_t d = 0; d < width; ++d) g[d] += ape[d];
    st.pending_kv.append(kv.f32() + t * width, 1);
    st.pending_gate.append(g, 1);
    if ((p + 1) % m != 0) continue;
    CLAWMINE_CHECK(st.pending_kv.rows() == m, "compressor window of layer ", c.layer, " has ",
                   st.pending_kv.rows(), " rows at position ", p, ", expected ", m);
    if (!spec.overlap) {
      slot_kv.insert(slot_kv.end(), st.pending_kv.data.begin(), st.pending_kv.data.end());
      slot_gate.insert(slot_gate.end(), st.pending_gate.data.begin(), st.pending_gate.data.end());
    } else {
      // Slots [0, m): previous window's first halves (absent before the first window).
      if (st.overlap_kv.rows() == m) {
        slot_kv.insert(slot_kv.end(), st.overlap_kv.data.begin(), st.overlap_kv.data.end());
        slot_gate.insert(slot_gate.end(), st.overlap_gate.data.begin(), st.overlap_gate.data.end());
      } else {
        slot_kv.insert(slot_kv.end(), m * hd, 0.0f);
        slot_gate.insert(slot_gate.end(), m * hd, neg_inf);
      }
      // Slots [m, 2m): this window's second halves; its first halves become the next overlap.
      st.overlap_kv.clear();
      st.overlap_gate.clear();
      for (int64_t r = 0; r < m; ++r) {
        const float* kr = st.pending_kv.row(r);
        const float* gr = st.pending_gate.row(r);
        slot_kv.insert(slot_kv.end(), kr + hd, kr + 2 * hd);
        slot_gate.insert(slot_gate.end(), gr + hd, gr + 2 * hd);
        st.overlap_kv.append(kr, 1);
        st.overlap_gate.append(gr, 1);
      }
    }
    entry_positions.push_back(p + 1 - m);  // the window's first position, j*m
    st.pending_kv.clear();
    st.pending_gate.clear();
  }
  const int64_t n_new = static_cast<int64_t>(entry_positions.size());
  if (n_new == 0) return;

  Buffer pooled(DType::kF32, {n_new, hd});
  TensorView kv_slots{DType::kF32, Device::kCpu, {n_new, slots, hd}, slot_kv.data()};
  TensorView gate_slots{DType::kF32, Device::kCpu, {n_new, slots, hd}, slot_gate.data()};
  c.be.compress_pool(kv_slots, gate_slots, pooled.view());
  c.be.rms_norm(pooled.view(), &w.norm, static_cast<float>(c.cfg.rms_norm_eps), pooled.view());
  c.be.rope(pooled.view().reshaped({n_new, 1, hd}), entry_positions, c.inv_freq, c.cfg.qk_rope_head_dim, false);
  apply_qdq(spec.qdq, pooled.f32(), n_new, hd, hd - c.cfg.qk_rope_head_dim);
  st.entries.append(pooled.f32(), n_new);
}

}  // namespace clawmine::model::deepseek_v4
