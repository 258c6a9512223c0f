// compress_chunk against a plain double reference of the windows (HCA: m slots; CSA: the
// previous window's first halves + this window's second halves, none before the first
// window), and chunk independence: one chunk, chunks of 1 and chunks of 7 give the same
// pooled entries and the same carried state, bit for bit. A chunk ending inside a window also
// returns that window's entry so far (the slots up to its last position), checked against the
// same reference, with its window start in entry_positions.
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

// Entry j per channel d over the slots at positions <= last: softmax of gate + ape (added in
// float32), weighted kv.
std::vector<float> reference_entry(const Sequence& s, int64_t j, int64_t last) {
  const int64_t w = s.width();
  std::vector<float> out(s.hd);
  for (int64_t d = 0; d < s.hd; ++d) {
    std::vector<std::pair<double, double>> slots;  // (logit, value)
    auto slot = [&](int64_t p, int64_t ch) {
      if (p > last) return;
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
    out[d] = static_cast<float>(acc / z);
  }
  return out;
}

std::vector<float> reference_entries(const Sequence& s) {
  std::vector<float> out;
  for (int64_t j = 0; j < s.L / s.m; ++j) {
    const std::vector<float> e = reference_entry(s, j, s.L - 1);
    out.insert(out.end(), e.begin(), e.end());
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

// Feeds the sequence `chunk` rows at a time; returns every complete entry in window order and
// checks each chunk's incomplete last window against the reference (partial_checks counts them).
std::vector<float> feed(ops::Backend& be, const Sequence& s, int64_t chunk, State& st, int* partial_checks = nullptr) {
  const int64_t w = s.width();
  std::vector<float> entries;
  for (int64_t p0 = 0; p0 < s.L; p0 += chunk) {
    const int64_t T = std::min(chunk, s.L - p0), last = p0 + T - 1, j0 = p0 / s.m;
    const int64_t n_out = last / s.m - j0 + 1;
    std::vector<float> kv(s.kv.begin() + p0 * w, s.kv.begin() + (p0 + T) * w);
    std::vector<float> gate(s.gate.begin() + p0 * w, s.gate.begin() + (p0 + T) * w);
    std::vector<float> ape = s.ape, pooled(n_out * s.hd);
    std::vector<int32_t> positions(T), entry_positions(n_out, -7);
    for (int64_t t = 0; t < T; ++t) positions[t] = static_cast<int32_t>(p0 + t);
    poison(pooled);
    be.compress_chunk(f32_view(kv, {T, w}), f32_view(gate, {T, w}), f32_view(ape, {s.m, w}),
                      i32_view(positions, {T}), s.m, s.overlap, st.view(s), f32_view(pooled, {n_out, s.hd}),
                      i32_view(entry_positions, {n_out}));
    for (int64_t n = 0; n < n_out; ++n) {
      const int64_t j = j0 + n;
      EXPECT_EQ(entry_positions[n], j * s.m);
      const std::vector<float> row(pooled.begin() + n * s.hd, pooled.begin() + (n + 1) * s.hd);
      if ((j + 1) * s.m - 1 <= last) {
        entries.insert(entries.end(), row.begin(), row.end());
      } else {
        EXPECT_LE(max_rel_diff(row, reference_entry(s, j, last)), kTightRel) << "partial window " << j << " at " << last;
        if (partial_checks) ++*partial_checks;
      }
    }
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
    int partial = 0;
    const std::vector<float> e = feed(*be, s, chunk, st, &partial);
    EXPECT_GT(partial, 0) << "chunk " << chunk;
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

TEST_P(CpuCompressChunk, NoWindowCompletesLeavesOverlapAndWritesOnlyThePartialEntry) {
  const bool overlap = GetParam();
  const Sequence s = make_sequence(3, 4, 5, overlap, 721);
  auto be = ops::make_cpu_backend(1);
  State st(s, 1.5f);
  int partial = 0;
  const std::vector<float> e = feed(*be, s, 3, st, &partial);
  EXPECT_TRUE(e.empty());
  EXPECT_EQ(partial, 1);
  for (float v : st.overlap_kv) EXPECT_EQ(v, 1.5f);
  for (int64_t d = 0; d < s.width(); ++d) EXPECT_EQ(st.pending_kv[2 * s.width() + d], s.kv[2 * s.width() + d]);
}

// scatter_rows stores row i at keys[i] / divisor (the model's entries by window start / rate) and
// leaves every other row alone; a key past the end is an error naming it.
TEST(CpuScatterRows, StoresRowsAtKeyOverDivisor) {
  auto be = ops::make_cpu_backend(1);
  std::vector<float> src = random_normal(3 * 5, 731), dst(6 * 5, 9.0f);
  std::vector<int32_t> keys{8, 0, 21};  // rows 2, 0, 5 at divisor 4
  be->scatter_rows(f32_view(src, {3, 5}), i32_view(keys, {3}), 4, f32_view(dst, {6, 5}));
  const int64_t want[] = {2, 0, 5};
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(dst[want[i] * 5 + c], src[i * 5 + c]);
  for (int64_t r : {1, 3, 4})
    for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(dst[r * 5 + c], 9.0f);
  std::vector<int32_t> bad{24};
  std::vector<float> one(5, 1.0f);
  try {
    be->scatter_rows(f32_view(one, {1, 5}), i32_view(bad, {1}), 4, f32_view(dst, {6, 5}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key 24"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, CpuCompressChunk, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "csa" : "hca"; });

}  // namespace
}  // namespace clawmine::test
