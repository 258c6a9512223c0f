// The CUDA attention ops (attention.cu, attention_mma.cu) against the CPU reference on the same
// fresh random inputs, outputs poisoned first:
//  * attention_index: exactly equal, for sliding, HCA (rate 128) and CSA (rate 4, top-k 512 and
//    2048, selections with -1 scattered anywhere) key lists, V4-Flash's window 128 and small odd
//    windows, T in {1, 5, 300}, chunks starting anywhere (p0 = 0, mid-window, far);
//  * sparse_attention: F32 within 1e-5 and BF16/F16 within 1e-2 (rel l2, over the whole output
//    and, for head dims >= 64, per query row at 3x that) at V4-Flash dims (64 heads x 512,
//    window 128 + top-k 512 / 2048, HCA with thousands of entries, T in {1, 5, 64, 300}) and
//    small odd dims (heads not a multiple of the block's 4 or 64, head dims 7, 36, 64, 100, 128,
//    200, 256 covering the vector and scalar load paths), -1 anywhere, duplicated rows, queries
//    with no key (0), no entries pool; an index outside the key space gives NaN, never a read out
//    of bounds. Each kernel path is hit on purpose: decode (T = 1, S = 640 / 1152: longer than the
//    one-launch decode kernel of attention_decode.cu takes (kDecodeMaxSlots), so split: the FMA
//    kernel for F32, tensor cores for BF16/F16, then the merge; attention_decode_test.cpp covers
//    the decode kernel), the unsplit tensor-core
//    prefill (T = 64, 300), splits with empty ranges, and bit-identical repeats;
//  * the tensor-core kernel's skip of key tiles without a valid slot: model-shaped causal lists
//    (window -1 before the start, CSA / HCA entries not complete yet), -1 tiles in the middle of
//    long lists, queries without keys (0), split and unsplit, and a list past the kernel's
//    2048-tile capacity (every tile walked).
// Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/attention_tuning.h"
#include "core/error.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaAttention : public GpuTest {};

::testing::AssertionResult same_ints_exactly(const std::vector<int32_t>& got, const std::vector<int32_t>& ref) {
  if (got.size() != ref.size()) return ::testing::AssertionFailure() << "sizes " << got.size() << " vs " << ref.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != ref[i])
      return ::testing::AssertionFailure() << "first difference at " << i << ": got " << got[i] << ", want " << ref[i];
  return ::testing::AssertionSuccess();
}

std::vector<int32_t> consecutive(int64_t p0, int64_t T) {
  std::vector<int32_t> p(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) p[t] = static_cast<int32_t>(p0 + t);
  return p;
}

// ---- attention_index ---------------------------------------------------------------------------

struct IndexCase {
  const char* name;
  int64_t T, p0, window, rate, k;  // k = 0: HCA or sliding (rate 0)
  bool csa;
  bool scattered;  // CSA: -1 anywhere in the selection, not only at its tail
};

TEST_F(CudaAttention, AttentionIndexEqualsCpu) {
  const IndexCase cases[] = {
      {"v4 sliding decode", 1, 1000, 128, 0, 0, false, false},
      {"v4 sliding decode at 5 (full pool)", 1, 5, 128, 0, 0, false, false},
      {"v4 HCA decode at 0 (full pool)", 1, 0, 128, 128, 0, false, false},
      {"v4 CSA decode at 9 k512 (full pool)", 1, 9, 128, 4, 512, true, false},
      {"v4 sliding T5 from 3", 5, 3, 128, 0, 0, false, false},
      {"v4 sliding prefill", 300, 0, 128, 0, 0, false, false},
      {"v4 HCA decode", 1, 5000, 128, 128, 0, false, false},
      {"v4 HCA T5 across an entry", 5, 125, 128, 128, 0, false, false},
      {"v4 HCA prefill", 300, 100, 128, 128, 0, false, false},
      {"v4 CSA decode k512", 1, 4000, 128, 4, 512, true, false},
      {"v4 CSA T5 k512 scattered", 5, 2047, 128, 4, 512, true, true},
      {"v4 CSA prefill k512 from 0", 300, 0, 128, 4, 512, true, false},
      {"v4 CSA T5 k2048", 5, 10001, 128, 4, 2048, true, true},
      {"small HCA", 7, 2, 3, 2, 0, false, false},
      {"small CSA", 7, 9, 3, 3, 5, true, true},
      {"small CSA k0", 3, 4, 3, 3, 0, true, false},
  };
  uint32_t seed = 1000;
  for (const IndexCase& c : cases) {
    SCOPED_TRACE(c.name);
    // as the model takes it: a one-token step's pool holds window-1 rows at every position
    const int64_t n_prev = c.T == 1 ? c.window - 1 : std::min(c.p0, c.window - 1);
    const int64_t entry_base = n_prev + c.T;
    const int64_t n_entries = c.rate > 0 ? (c.p0 + c.T) / c.rate : 0;
    const int64_t S = c.window + (c.csa ? c.k : n_entries);
    const std::vector<int32_t> pos = consecutive(c.p0, c.T);
    const OnBoth positions = same_ints(*cpu, *cuda, pos, {c.T});
    OnBoth selected;
    if (c.csa) {  // distinct causally valid entries, -1 padded (tail or scattered)
      std::mt19937 rng(++seed);
      std::vector<int32_t> sel(static_cast<size_t>(c.T * c.k), -1);
      for (int64_t t = 0; t < c.T; ++t) {
        const int64_t valid = std::min(n_entries, (pos[t] + 1) / c.rate);
        std::vector<int32_t> all(static_cast<size_t>(valid));
        for (int64_t j = 0; j < valid; ++j) all[j] = static_cast<int32_t>(j);
        std::shuffle(all.begin(), all.end(), rng);
        for (int64_t i = 0; i < std::min(valid, c.k); ++i) sel[t * c.k + i] = all[i];
        if (c.scattered) std::shuffle(sel.begin() + t * c.k, sel.begin() + (t + 1) * c.k, rng);
      }
      selected = same_ints(*cpu, *cuda, sel, {c.T, c.k});
    }
    const OnBoth idx = poisoned_both(*cpu, *cuda, {c.T, S}, DType::kI32);
    cpu->attention_index(positions.cpu.view(), n_prev, c.window, entry_base, n_entries, c.rate,
                         c.csa ? selected.cpu.view() : TensorView{}, idx.cpu.view());
    cuda->attention_index(positions.gpu.view(), n_prev, c.window, entry_base, n_entries, c.rate,
                          c.csa ? selected.gpu.view() : TensorView{}, idx.gpu.view());
    EXPECT_TRUE(same_ints_exactly(download_as<int32_t>(*cuda, idx.gpu.view()), download_as<int32_t>(*cpu, idx.cpu.view())));
  }
}

// ---- sparse_attention --------------------------------------------------------------------------

struct AttnCase {
  const char* name;
  int64_t T, H, Dh, Nw, Ne, Wslots, Cslots;  // S = Wslots + Cslots
  bool sink = true;
  float q_scale = 1.0f;  // > 1: sharper softmaxes
};

// Index lists like attention_index makes, with -1 sprinkled anywhere: window slots over kv rows,
// compressed slots over entry rows (duplicates possible), the last query of a multi-token case
// without any key.
std::vector<int32_t> random_idx(const AttnCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const int64_t S = c.Wslots + c.Cslots;
  std::vector<int32_t> idx(static_cast<size_t>(c.T * S), -1);
  for (int64_t t = 0; t < c.T; ++t) {
    if (c.T > 1 && t == c.T - 1) break;  // no valid key: out = 0
    for (int64_t s = 0; s < c.Wslots; ++s)
      if (u(rng) < 0.9f) idx[t * S + s] = static_cast<int32_t>((t + s) % c.Nw);
    for (int64_t s = c.Wslots; s < S && c.Ne > 0; ++s)
      if (u(rng) < 0.8f) idx[t * S + s] = static_cast<int32_t>(c.Nw + static_cast<int64_t>(u(rng) * c.Ne) % c.Ne);
  }
  return idx;
}

// Runs both backends on one case (idx from random_idx unless given) and checks the GPU output;
// returns it (as floats) for the repeat checks.
std::vector<float> check_sparse_attention(ops::Backend& cpu, ops::Backend& cuda, const AttnCase& c, DType dt,
                                          uint32_t seed, const std::vector<int32_t>* idx_override = nullptr) {
  SCOPED_TRACE(str_cat(c.name, " ", dtype_label(dt)));
  const int64_t S = c.Wslots + c.Cslots;
  std::vector<float> qv = random_normal(c.T * c.H * c.Dh, seed + 1);
  for (float& x : qv) x *= c.q_scale;
  const OnBoth q = same_floats(cpu, cuda, qv, {c.T, c.H, c.Dh}, dt);
  const OnBoth kv = same_floats(cpu, cuda, random_normal(c.Nw * c.Dh, seed + 2), {c.Nw, c.Dh}, dt);
  OnBoth entries;
  if (c.Ne > 0) entries = same_floats(cpu, cuda, random_normal(c.Ne * c.Dh, seed + 3), {c.Ne, c.Dh}, dt);
  OnBoth sink;
  if (c.sink) sink = same_floats(cpu, cuda, random_normal(c.H, seed + 4), {c.H});
  const OnBoth idx = same_ints(cpu, cuda, idx_override ? *idx_override : random_idx(c, seed + 5), {c.T, S});
  const OnBoth out = poisoned_both(cpu, cuda, {c.T, c.H, c.Dh}, dt);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dh));
  cpu.sparse_attention(q.cpu.view(), kv.cpu.view(), c.Ne > 0 ? entries.cpu.view() : TensorView{}, idx.cpu.view(),
                       c.sink ? sink.cpu.view() : TensorView{}, scale, out.cpu.view());
  cuda.sparse_attention(q.gpu.view(), kv.gpu.view(), c.Ne > 0 ? entries.gpu.view() : TensorView{}, idx.gpu.view(),
                        c.sink ? sink.gpu.view() : TensorView{}, scale, out.gpu.view());
  const std::vector<float> got = download_f32(cuda, out.gpu.view()), ref = download_f32(cpu, out.cpu.view());
  const double budget = dt == DType::kF32 ? kF32Budget : kBf16Budget;
  EXPECT_TRUE(within(got, ref, budget));
  if (c.Dh >= 64) {  // per query row too: a wrong head group or split cannot hide in the total
    const size_t dh = static_cast<size_t>(c.Dh);
    for (size_t row = 0; row < got.size() / dh; ++row) {
      const std::vector<float> g(got.begin() + row * dh, got.begin() + (row + 1) * dh);
      const std::vector<float> r(ref.begin() + row * dh, ref.begin() + (row + 1) * dh);
      const ::testing::AssertionResult ok = within(g, r, 3 * budget);
      if (!ok) {
        ADD_FAILURE() << "query " << row / c.H << ", head " << row % c.H << ": " << ok.message();
        break;
      }
    }
  }
  if (c.T > 1 && idx_override == nullptr) {  // the last query has no key
    for (int64_t i = (c.T - 1) * c.H * c.Dh; i < c.T * c.H * c.Dh; ++i) {
      EXPECT_EQ(got[i], 0.0f) << "query without keys, element " << i;
      if (got[i] != 0.0f) break;
    }
  }
  return got;
}

TEST_F(CudaAttention, SparseAttentionV4FlashDims) {
  const AttnCase cases[] = {
      // name, T, H, Dh, Nw (window pool), Ne (entries), window slots, compressed slots
      {"CSA decode k512", 1, 64, 512, 128, 1000, 128, 512},
      {"CSA T5 k2048", 5, 64, 512, 132, 4000, 128, 2048},
      {"CSA prefill k512", 300, 64, 512, 427, 600, 128, 512},
      {"HCA T5 3000 entries", 5, 64, 512, 132, 3000, 128, 3000},
      {"sliding only T5", 5, 64, 512, 132, 0, 128, 0},
      {"CSA decode sharp", 1, 64, 512, 128, 1000, 128, 512, true, 6.0f},
  };
  uint32_t seed = 2000;
  for (const AttnCase& c : cases)
    for (const DType dt : {DType::kF32, DType::kBF16}) check_sparse_attention(*cpu, *cuda, c, dt, seed += 10);
}

TEST_F(CudaAttention, SparseAttentionSmallOddDims) {
  const AttnCase cases[] = {
      {"H3 Dh36", 5, 3, 36, 9, 11, 4, 6},       {"H5 Dh7", 5, 5, 7, 9, 11, 4, 6},
      {"H4 Dh64", 1, 4, 64, 6, 3, 4, 5},        {"H6 Dh100 T300", 300, 6, 100, 40, 17, 8, 9},
      {"H2 Dh200", 5, 2, 200, 12, 20, 5, 7},    {"H9 Dh20 no entries", 5, 9, 20, 8, 0, 6, 0},
      {"H3 Dh36 no sink", 5, 3, 36, 9, 11, 4, 6, false},
      {"H1 Dh512 one key", 1, 1, 512, 1, 0, 1, 0},
  };
  uint32_t seed = 3000;
  for (const AttnCase& c : cases)
    for (const DType dt : {DType::kF32, DType::kBF16}) check_sparse_attention(*cpu, *cuda, c, dt, seed += 10);
}

// Each kernel path on purpose: T = 1 splits S (F32: FMA kernel + merge; BF16/F16: tensor cores +
// merge), T = 64 / 300 at 64 x 512 run the tensor-core kernel (T = 64 with two splits, T = 300
// unsplit), and smaller tensor-core shapes: two head groups (H = 80), head dims 64 / 128 / 256.
TEST_F(CudaAttention, SparseAttentionEachPath) {
  const AttnCase cases[] = {
      {"split decode S640", 1, 64, 512, 128, 1000, 128, 512},
      {"split decode S1152", 1, 64, 512, 128, 3000, 128, 1024},
      {"split decode S640 no sink", 1, 64, 512, 128, 1000, 128, 512, false},
      {"split decode S1152 sharp", 1, 64, 512, 128, 3000, 128, 1024, true, 8.0f},
      {"prefill T64", 64, 64, 512, 191, 600, 128, 512},
      {"prefill T300", 300, 64, 512, 427, 700, 128, 512},
      {"H80 Dh128 T3 two head groups", 3, 80, 128, 40, 300, 20, 245},
      {"H80 Dh128 T20 two head groups", 20, 80, 128, 40, 300, 20, 245},
      {"H16 Dh256 T1", 1, 16, 256, 50, 400, 64, 300},
      {"H16 Dh256 T40", 40, 16, 256, 50, 400, 64, 300},
      {"H64 Dh64 T7", 7, 64, 64, 30, 200, 16, 100},
      {"H64 Dh64 T40", 40, 64, 64, 30, 200, 16, 100},
  };
  uint32_t seed = 5000;
  for (const AttnCase& c : cases)
    for (const DType dt : {DType::kF32, DType::kBF16, DType::kF16}) check_sparse_attention(*cpu, *cuda, c, dt, seed += 10);
}

// The decode attention's split cap (set_attn_decode_max_splits): one range, three and the default
// (~40 at S = 640), BF16 and F16 on the tensor-core kernel, each within the CPU's tolerance; with
// the cap at one and three (empty ranges among the three) for sparse keys too.
TEST_F(CudaAttention, SparseAttentionSplitCap) {
  struct Reset {
    ~Reset() { backend::cuda::set_attn_decode_max_splits(-1); }
  } reset;
  const AttnCase c{"split decode S640", 1, 64, 512, 128, 1000, 128, 512};
  const AttnCase sparse{"sparse keys S1152", 1, 64, 512, 128, 3000, 128, 1024};
  std::vector<int32_t> idx(1152, -1);
  for (int s = 700; s < 712; ++s) idx[static_cast<size_t>(s)] = 128 + (s * 37) % 3000;
  uint32_t seed = 6500;
  for (int cap : {1, 3, 0}) {
    SCOPED_TRACE(str_cat("cap ", cap));
    backend::cuda::set_attn_decode_max_splits(cap);
    for (const DType dt : {DType::kBF16, DType::kF16}) check_sparse_attention(*cpu, *cuda, c, dt, seed += 10);
    if (cap > 0) check_sparse_attention(*cpu, *cuda, sparse, DType::kBF16, seed += 10, &idx);
  }
}

// Split decode where most ranges hold no valid key (their partials must drop out of the merge),
// and a range that holds all of them.
TEST_F(CudaAttention, SparseAttentionSplitsWithEmptyRanges) {
  const AttnCase c{"sparse keys S1152", 1, 64, 512, 128, 3000, 128, 1024};
  std::vector<int32_t> idx(1152, -1);
  for (int s = 700; s < 712; ++s) idx[static_cast<size_t>(s)] = 128 + (s * 37) % 3000;  // entries only
  idx[5] = 3;                                                                           // one window key
  uint32_t seed = 6000;
  for (const DType dt : {DType::kF32, DType::kBF16}) check_sparse_attention(*cpu, *cuda, c, dt, seed += 10, &idx);
}

// Same inputs, same bits: the split merge and the tensor-core softmax use fixed orders.
TEST_F(CudaAttention, SparseAttentionRepeatsBitIdentical) {
  const AttnCase cases[] = {
      {"split decode S640", 1, 64, 512, 128, 1000, 128, 512},
      {"prefill T64", 64, 64, 512, 191, 600, 128, 512},
  };
  for (const AttnCase& c : cases) {
    for (const DType dt : {DType::kF32, DType::kBF16}) {
      const std::vector<float> a = check_sparse_attention(*cpu, *cuda, c, dt, 7000);
      const std::vector<float> b = check_sparse_attention(*cpu, *cuda, c, dt, 7000);
      SCOPED_TRACE(str_cat(c.name, " ", dtype_label(dt), " repeated"));
      EXPECT_TRUE(same_bits(b, a));
    }
  }
}

// Decode-sized queries through the split paths: no valid key anywhere gives 0; one index outside
// the key space (in a late range) gives NaN for the whole query.
TEST_F(CudaAttention, SparseAttentionSplitNoKeyAndBadIndex) {
  const int64_t H = 64, Dh = 512, Nw = 128, Ne = 1000, S = 640;
  for (const DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_label(dt));
    ops::DeviceBuffer q = upload_f32(*cuda, random_normal(H * Dh, 8001), {1, H, Dh}, dt);
    ops::DeviceBuffer kv = upload_f32(*cuda, random_normal(Nw * Dh, 8002), {Nw, Dh}, dt);
    ops::DeviceBuffer entries = upload_f32(*cuda, random_normal(Ne * Dh, 8003), {Ne, Dh}, dt);
    ops::DeviceBuffer sink = upload_f32(*cuda, random_normal(H, 8004), {H});
    std::vector<int32_t> none(static_cast<size_t>(S), -1);
    std::vector<int32_t> bad(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) bad[static_cast<size_t>(s)] = static_cast<int32_t>(s % (Nw + Ne));
    bad[600] = static_cast<int32_t>(Nw + Ne);  // one past the last row
    for (int which = 0; which < 2; ++which) {
      const std::vector<int32_t>& h_idx = which == 0 ? none : bad;
      ops::DeviceBuffer d_idx =
          upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {1, S}, const_cast<int32_t*>(h_idx.data())});
      ops::DeviceBuffer out = poisoned(*cuda, dt, {1, H, Dh});
      cuda->sparse_attention(q.view(), kv.view(), entries.view(), d_idx.view(), sink.view(), 0.04f, out.view());
      const std::vector<float> got = download_f32(*cuda, out.view());
      for (size_t i = 0; i < got.size(); ++i) {
        if (which == 0) {
          ASSERT_EQ(got[i], 0.0f) << "no key, element " << i;
        } else {
          ASSERT_TRUE(std::isnan(got[i])) << "bad index, element " << i;
        }
      }
    }
  }
}

TEST_F(CudaAttention, SparseAttentionBadIndexGivesNaN) {
  const int64_t T = 2, H = 5, Dh = 64, Nw = 4, Ne = 3, S = 3;
  const std::vector<int32_t> idx = {0, 7, 1, /* row 1 valid */ 2, 6, -1};  // 7 is outside [-1, 7)
  for (const DType dt : {DType::kF32, DType::kBF16}) {  // FMA kernel; tensor-core kernel (Dh 64)
    SCOPED_TRACE(dtype_label(dt));
    ops::DeviceBuffer q = upload_f32(*cuda, random_normal(T * H * Dh, 4001), {T, H, Dh}, dt);
    ops::DeviceBuffer kv = upload_f32(*cuda, random_normal(Nw * Dh, 4002), {Nw, Dh}, dt);
    ops::DeviceBuffer entries = upload_f32(*cuda, random_normal(Ne * Dh, 4003), {Ne, Dh}, dt);
    ops::DeviceBuffer sink = upload_f32(*cuda, random_normal(H, 4004), {H});
    const TensorView host_idx{DType::kI32, Device::kCpu, {T, S}, const_cast<int32_t*>(idx.data())};
    ops::DeviceBuffer d_idx = upload_raw(*cuda, host_idx);
    ops::DeviceBuffer out = poisoned(*cuda, dt, {T, H, Dh});
    cuda->sparse_attention(q.view(), kv.view(), entries.view(), d_idx.view(), sink.view(), 0.125f, out.view());
    const std::vector<float> got = download_f32(*cuda, out.view());
    for (int64_t i = 0; i < H * Dh; ++i) ASSERT_TRUE(std::isnan(got[i])) << "query 0, element " << i;
    for (int64_t i = H * Dh; i < T * H * Dh; ++i) ASSERT_TRUE(std::isfinite(got[i])) << "query 1, element " << i;
  }
}

TEST_F(CudaAttention, SparseAttentionRejectsMixedDtypes) {
  ops::DeviceBuffer q = upload_f32(*cuda, random_normal(64, 4101), {1, 1, 64}, DType::kBF16);
  ops::DeviceBuffer kv = upload_f32(*cuda, random_normal(64, 4102), {1, 64});
  const std::vector<int32_t> idx = {0};
  ops::DeviceBuffer d_idx = upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {1, 1}, const_cast<int32_t*>(idx.data())});
  ops::DeviceBuffer out = poisoned(*cuda, DType::kBF16, {1, 1, 64});
  EXPECT_THROW(cuda->sparse_attention(q.view(), kv.view(), TensorView{}, d_idx.view(), TensorView{}, 1.0f, out.view()),
               Error);
}

// ---- tensor-core prefill: empty key tiles skipped (attention_mma.cu) ----------------------------

// Model-shaped index lists: window slots t-W+1 .. t (-1 before the sequence start), then
// `valid(t)` compressed slots (entry rows), -1 after; query `empty_row` (if >= 0) has no key.
std::vector<int32_t> causal_idx(const AttnCase& c, int64_t (*valid)(int64_t), int64_t empty_row) {
  const int64_t S = c.Wslots + c.Cslots;
  std::vector<int32_t> idx(static_cast<size_t>(c.T * S), -1);
  for (int64_t t = 0; t < c.T; ++t) {
    if (t == empty_row) continue;
    for (int64_t s = 0; s < c.Wslots; ++s) {
      const int64_t kp = t - c.Wslots + 1 + s;
      if (kp >= 0) idx[t * S + s] = static_cast<int32_t>(kp % c.Nw);
    }
    const int64_t n = std::min(c.Cslots, valid(t));
    for (int64_t j = 0; j < n; ++j) idx[t * S + c.Wslots + j] = static_cast<int32_t>(c.Nw + (t * 7 + j * 13) % c.Ne);
  }
  return idx;
}

void expect_zero_row(const std::vector<float>& got, const AttnCase& c, int64_t t) {
  for (int64_t i = t * c.H * c.Dh; i < (t + 1) * c.H * c.Dh; ++i) {
    EXPECT_EQ(got[i], 0.0f) << "query " << t << " without keys, element " << i;
    if (got[i] != 0.0f) break;
  }
}

// Causal prefill lists as the model makes them (CSA min(k, (t+1)/4) entries, HCA (t+1)/rate):
// tiles wholly -1 (window before the start, entries not complete yet) are skipped, partly padded
// tiles computed; a query without any key gives 0; repeats are bit-identical.
TEST_F(CudaAttention, SparseAttentionPrefillCausalPadding) {
  struct Case {
    AttnCase c;
    int64_t (*valid)(int64_t);
  };
  const Case cases[] = {
      {{"causal CSA T300 k512", 300, 64, 512, 300, 600, 128, 512}, [](int64_t t) { return (t + 1) / 4; }},
      {{"causal HCA-like T300 rate 8", 300, 64, 512, 300, 64, 128, 64}, [](int64_t t) { return (t + 1) / 8; }},
      {{"causal H80 Dh128 T200", 200, 80, 128, 200, 90, 64, 90}, [](int64_t t) { return (t + 1) / 3; }},
  };
  uint32_t seed = 9000;
  for (const Case& k : cases) {
    const std::vector<int32_t> idx = causal_idx(k.c, k.valid, 5);
    for (const DType dt : {DType::kBF16, DType::kF16}) {
      const std::vector<float> a = check_sparse_attention(*cpu, *cuda, k.c, dt, seed, &idx);
      expect_zero_row(a, k.c, 5);
      const std::vector<float> b = check_sparse_attention(*cpu, *cuda, k.c, dt, seed, &idx);
      SCOPED_TRACE(str_cat(k.c.name, " ", dtype_label(dt), " repeated"));
      EXPECT_TRUE(same_bits(b, a));
      seed += 10;
    }
  }
}

// Long key ranges: whole -1 tiles in the middle of a list (not only at its tail), queries without
// keys, one block per query (T large enough that S is not split) and split decode; and a range of
// more than 2048 tiles (the kernel's tile list capacity: every tile walked, same results).
TEST_F(CudaAttention, SparseAttentionPrefillLongSparseRanges) {
  const AttnCase cases[] = {
      {"H8 Dh128 T80 S4224 unsplit", 80, 8, 128, 100, 5000, 128, 4096},
      {"H64 Dh512 T2 S4224 split", 2, 64, 512, 100, 5000, 128, 4096},
      {"H4 Dh64 T70 S66000 past the tile list", 70, 4, 64, 100, 3000, 128, 65872},
  };
  uint32_t seed = 9500;
  for (const AttnCase& c : cases) {
    const int64_t S = c.Wslots + c.Cslots;
    std::mt19937 rng(seed);
    std::vector<int32_t> idx(static_cast<size_t>(c.T * S), -1);
    for (int64_t t = 0; t < c.T; ++t) {
      if (t % 9 == 4) continue;  // no key at all
      const int64_t period = 97 + t % 5 * 331;  // runs of 0-31 valid slots separated by -1 gaps of several tiles
      for (int64_t s = t % 3; s < S; s += period) {
        const int64_t run = static_cast<int64_t>(rng() % 32);
        for (int64_t j = s; j < std::min(S, s + run); ++j)
          idx[t * S + j] = static_cast<int32_t>(j < c.Wslots ? j % c.Nw : c.Nw + (j * 31 + t) % c.Ne);
      }
    }
    for (const DType dt : {DType::kBF16, DType::kF16}) {
      const std::vector<float> got = check_sparse_attention(*cpu, *cuda, c, dt, seed += 10, &idx);
      for (int64_t t = 4; t < c.T; t += 9) expect_zero_row(got, c, t);
    }
  }
}

}  // namespace
}  // namespace clawmine::test
