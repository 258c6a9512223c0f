// compress_chunk against a plain double reference of the windows (HCA: m slots; CSA: the
// previous window's first halves + this window's second halves, none before the first
// window), and chunk independence: one chunk, chunks of 1 and chunks of 7 give the same
// pooled entries and the same carried state, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

struct Sequence {
  int64_t L, m, hd;
  bool overlap;
  std::vector<float> kv, gate, ape;  // [L, c*hd], [L, c*hd], [m, c*hd]
  int64_t width() const { return (overlap ? 2 : 1) * hd; }
};

Sequence make_sequence(int64_t L, int64_t m, int64_t hd, bool overlap, uint32_t seed) {
  Sequence s{L, m, hd, overlap, {}, {}, {}};
  s.kv = random_normal(L * s.width(), seed);
  s.gate = random_normal(L * s.width(), seed + 1, 2.0f);
  s.ape = random_normal(m * s.width(), seed + 2, 0.5f);
  return s;
}

// Entry j per channel d: softmax over its slots of gate + ape (added in float32), weighted kv.
std::vector<float> reference_entries(const Sequence& s) {
  const int64_t n = s.L / s.m, w = s.width();
  std::vector<float> out(n * s.hd);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < s.hd; ++d) {
      std::vector<std::pair<double, double>> slots;  // (logit, value)
      auto slot = [&](int64_t p, int64_t ch) {
        slots.emplace_back(static_cast<float>(s.gate[p * w + ch] + s.ape[(p % s.m) * w + ch]), s.kv[p * w + ch]);
      };
      if (!s.overlap) {
        for (int64_t r = 0; r < s.m; ++r) slot(j * s.m + r, d);
      } else {
        if (j > 0)
          for (int64_t r = 0; r < s.m; ++r) slot((j - 1) * s.m + r, d);
        for (int64_t r = 0; r < s.m; ++r) slot(j * s.m + r, s.hd + d);
      }
      double mx = -1e300, z = 0, acc = 0;
      for (auto& [l, v] : slots) mx = std::max(mx, l);
      for (auto& [l, v] : slots) z += std::exp(l - mx), acc += std::exp(l - mx) * v;
      out[j * s.hd + d] = static_cast<float>(acc / z);
    }
  return out;
}

struct State {
  std::vector<float> pending_kv, pending_gate, overlap_kv, overlap_gate;
  State(const Sequence& s, float init)
      : pending_kv(s.m * s.width(), init), pending_gate(s.m * s.width(), init),
        overlap_kv(s.overlap ? s.m * s.hd : 0, init), overlap_gate(s.overlap ? s.m * s.hd : 0, init) {}
  ops::CompressorStateView view(const Sequence& s) {
    ops::CompressorStateView v;
    v.pending_kv = f32_view(pending_kv, {s.m, s.width()});
    v.pending_gate = f32_view(pending_gate, {s.m, s.width()});
    if (s.overlap) {
      v.overlap_kv = f32_view(overlap_kv, {s.m, s.hd});
      v.overlap_gate = f32_view(overlap_gate, {s.m, s.hd});
    }
    return v;
  }
  bool operator==(const State& o) const {
    return same_bits(pending_kv, o.pending_kv) && same_bits(pending_gate, o.pending_gate) &&
           same_bits(overlap_kv, o.overlap_kv) && same_bits(overlap_gate, o.overlap_gate);
  }
};

// Feeds the sequence `chunk` rows at a time; returns every pooled entry in window order.
std::vector<float> feed(ops::Backend& be, const Sequence& s, int64_t chunk, State& st) {
  const int64_t w = s.width();
  std::vector<float> entries;
  for (int64_t p0 = 0; p0 < s.L; p0 += chunk) {
    const int64_t T = std::min(chunk, s.L - p0), n_new = (p0 + T) / s.m - p0 / s.m;
    std::vector<float> kv(s.kv.begin() + p0 * w, s.kv.begin() + (p0 + T) * w);
    std::vector<float> gate(s.gate.begin() + p0 * w, s.gate.begin() + (p0 + T) * w);
    std::vector<float> ape = s.ape, pooled(std::max<int64_t>(n_new, 1) * s.hd);
    poison(pooled);
    be.compress_chunk(f32_view(kv, {T, w}), f32_view(gate, {T, w}), f32_view(ape, {s.m, w}), p0, s.m, s.overlap,
                      st.view(s), f32_view(pooled, {n_new, s.hd}));
    entries.insert(entries.end(), pooled.begin(), pooled.begin() + n_new * s.hd);
  }
  return entries;
}

class CpuCompressChunk : public ::testing::TestWithParam<bool> {};  // overlap (CSA) or not (HCA)

TEST_P(CpuCompressChunk, MatchesReferenceAndIsChunkFree) {
  const bool overlap = GetParam();
  const Sequence s = make_sequence(/*L=*/29, /*m=*/4, /*hd=*/6, overlap, overlap ? 701 : 711);
  auto be = ops::make_cpu_backend(2);
  // The overlap rows start as NaN: the first window must not read them (CSA: no previous window).
  State whole(s, std::numeric_limits<float>::quiet_NaN());
  const std::vector<float> entries = feed(*be, s, s.L, whole);
  ASSERT_EQ(static_cast<int64_t>(entries.size()), (s.L / s.m) * s.hd);
  EXPECT_LE(max_rel_diff(entries, reference_entries(s)), kTightRel);
  for (int64_t chunk : {1, 7}) {
    State st(s, std::numeric_limits<float>::quiet_NaN());
    const std::vector<float> e = feed(*be, s, chunk, st);
    EXPECT_TRUE(same_bits(e, entries)) << "chunk " << chunk;
    EXPECT_TRUE(st == whole) << "chunk " << chunk;
  }
  // The carried state: the incomplete tail (positions 28 = row 0) and the last window's first halves.
  const int64_t w = s.width();
  for (int64_t d = 0; d < w; ++d) {
    EXPECT_EQ(whole.pending_kv[d], s.kv[28 * w + d]);
    EXPECT_EQ(whole.pending_gate[d], s.gate[28 * w + d] + s.ape[d]);
  }
  if (overlap)
    for (int64_t r = 0; r < s.m; ++r)
      for (int64_t d = 0; d < s.hd; ++d) EXPECT_EQ(whole.overlap_kv[r * s.hd + d], s.kv[(24 + r) * w + d]);
}

TEST_P(CpuCompressChunk, NoWindowCompletesLeavesOverlapAndWritesNoEntry) {
  const bool overlap = GetParam();
  const Sequence s = make_sequence(3, 4, 5, overlap, 721);
  auto be = ops::make_cpu_backend(1);
  State st(s, 1.5f);
  const std::vector<float> e = feed(*be, s, 3, st);
  EXPECT_TRUE(e.empty());
  for (float v : st.overlap_kv) EXPECT_EQ(v, 1.5f);
  for (int64_t d = 0; d < s.width(); ++d) EXPECT_EQ(st.pending_kv[2 * s.width() + d], s.kv[2 * s.width() + d]);
}

INSTANTIATE_TEST_SUITE_P(Kinds, CpuCompressChunk, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "csa" : "hca"; });

}  // namespace
}  // namespace clawmine::test
