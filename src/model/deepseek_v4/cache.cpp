// Cache rows in the backend's memory: the fixed-size rows (window, compressor state) are
// allocated by the first forward; entry stores grow by doubling (allocate, copy the rows
// written so far, release the old buffer), so no maximum length is needed up front.
#include <algorithm>

#include "model/deepseek_v4/layer.h"

namespace clawmine::model::deepseek_v4 {

void reserve_cache(ops::Backend& be, const ModelConfig& cfg, SequenceCache& cache, int64_t end) {
  const DType act = be.act_dtype();
  auto state = [&](CompressorCache& st, int64_t m, int64_t hd, bool overlap) {
    if (!st.pending_kv.view().empty()) return;
    const int64_t width = (overlap ? 2 : 1) * hd;
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
  // Entry rows [0, end / m) must exist; the rows of earlier chunks move to a buffer twice as large.
  auto entries = [&](CompressorCache& st, int64_t m, int64_t hd) {
    const int64_t need = end / m;
    if (need <= st.capacity()) return;
    const int64_t have = cache.position / m;  // rows written so far
    ops::DeviceBuffer grown(be, act, {std::max({need, 2 * st.capacity(), int64_t{16}}), hd});
    if (have > 0) be.copy(st.entries.view().slice0(0, have), grown.view().slice0(0, have));
    st.entries = std::move(grown);
  };
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    LayerCache& lc = cache.layers[static_cast<size_t>(l)];
    const AttentionKind kind = cfg.layer_types[static_cast<size_t>(l)];
    if (lc.window.view().empty() && cfg.sliding_window > 1)
      lc.window = ops::DeviceBuffer(be, act, {cfg.sliding_window - 1, cfg.head_dim});
    if (kind == AttentionKind::kSliding) continue;
    const bool csa = kind == AttentionKind::kCompressedSparse;
    const int64_t m = csa ? cfg.compress_rate_csa : cfg.compress_rate_hca;
    state(lc.compressor, m, cfg.head_dim, csa);
    entries(lc.compressor, m, cfg.head_dim);
    if (!csa) continue;
    state(lc.indexer, m, cfg.index_head_dim, true);
    entries(lc.indexer, m, cfg.index_head_dim);
  }
}

}  // namespace clawmine::model::deepseek_v4
