// Cache rows in the backend's memory: the fixed-size rows (window, compressor state) are
// allocated by the first forward; entry stores grow by doubling (allocate, copy the rows
// written so far, release the old buffer), so no maximum length is needed up front.
#include <algorithm>
#include <atomic>

#include "model/deepseek_v4/layer.h"

namespace clawmine::model::deepseek_v4 {

namespace {
std::atomic<uint64_t> next_layout_id{1};
}  // namespace

void reserve_cache(ops::Backend& be, const ModelConfig& cfg, SequenceCache& cache, int64_t end) {
  const DType act = be.act_dtype();
  bool allocated = false;
  auto state = [&](CompressorCache& st, int64_t m, int64_t hd, bool overlap) {
    if (!st.pending_kv.view().empty()) return;
    const int64_t width = (overlap ? 2 : 1) * hd;
    allocated = true;
    st.pending_kv = ops::DeviceBuffer(be, DType::kF32, {m, width});
    st.pending_gate = ops::DeviceBuffer(be, DType::kF32, {m, width});
    be.fill(st.pending_kv.view(), 0.0f);  // never read before written; zeros keep states comparable
    be.fill(st.pending_gate.view(), 0.0f);
    if (overlap) {
      st.overlap_kv = ops::DeviceBuffer(be, DType::kF32, {m, hd});
      st.overlap_gate = ops::DeviceBuffer(be, DType::kF32, {m, hd});
      be.fill(st.overlap_kv.view(), 0.0f);
      be.fill(st.overlap_gate.view(), 0.0f);
    }
  };
  // Entry rows [0, (end-1)/m] must exist (the last one may be an incomplete window's); the rows of
  // earlier chunks move to a buffer twice as large. At least kMinEntryRows: every growth records a
  // new decode-step graph (a new layout), ~20 ms on the H100 at V4-Flash size, so a short sequence
  // should not grow its stores at all (64 rows: CSA's 256 positions, HCA's 8192; ~1 KB a row).
  constexpr int64_t kMinEntryRows = 64;
  auto entries = [&](CompressorCache& st, int64_t m, int64_t hd) {
    const int64_t need = (end - 1) / m + 1;
    if (need <= st.capacity()) return;
    allocated = true;
    const int64_t have = cache.position / m;  // rows written so far
    ops::DeviceBuffer grown(be, act, {std::max({need, 2 * st.capacity(), kMinEntryRows}), hd});
    // Rows not written yet are zeros, never garbage: ops see the whole store (masked past each
    // query's complete windows), and diagnostics summarize it.
    be.fill(grown.view(), 0.0f);
    if (have > 0) be.copy(st.entries.view().slice0(0, have), grown.view().slice0(0, have));
    st.entries = std::move(grown);
  };
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    LayerCache& lc = cache.layers[static_cast<size_t>(l)];
    const AttentionKind kind = cfg.layer_types[static_cast<size_t>(l)];
    if (lc.window.view().empty() && cfg.sliding_window > 1) {
      lc.window = ops::DeviceBuffer(be, act, {cfg.sliding_window - 1, cfg.head_dim});
      be.fill(lc.window.view(), 0.0f);  // a one-token step's pool holds every row, listed or not
      allocated = true;
    }
    if (kind == AttentionKind::kSliding) continue;
    const bool csa = kind == AttentionKind::kCompressedSparse;
    const int64_t m = csa ? cfg.compress_rate_csa : cfg.compress_rate_hca;
    state(lc.compressor, m, cfg.head_dim, csa);
    entries(lc.compressor, m, cfg.head_dim);
    if (!csa) continue;
    state(lc.indexer, m, cfg.index_head_dim, true);
    entries(lc.indexer, m, cfg.index_head_dim);
  }
  if (allocated) cache.layout_id = next_layout_id.fetch_add(1);
}

}  // namespace clawmine::model::deepseek_v4
