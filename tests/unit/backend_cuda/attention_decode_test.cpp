// The CUDA decode attention (T <= 4 queries: attention_decode_mma.cu's tensor-core split kernel +
// merge for BF16/F16 at head dims 64..512, any number of slots; attention_decode.cu's F32-FMA
// kernel, which merges in its last block per (query, head group), for F32 up to 256 slots) and
// the fused sparse_attention_rope (attention, then the inverse RoPE of the output), on fresh
// random inputs with NaN-poisoned outputs:
//  * sparse_attention_rope equals sparse_attention followed by rope(inverse) on the same CUDA
//    backend bit for bit (the decode kernel serves both; T = 5 and 64 check the composition that
//    larger chunks take), and the CPU backend within 1e-5 (F32) / 1e-2 (BF16, F16) rel l2, per
//    query row at 3x;
//  * shapes: V4-Flash (64 heads x 512, rope 64) with a CSA-like list (window 128 + top-k 512, -1
//    anywhere, random entry rows), an HCA-like list (window + every available entry, thousands of
//    entries so S exceeds the kernel's 64 splits x 16 slots), a sliding-only list with a window
//    not yet full, T = 1, 2, 3, 4; odd heads (a partial head group), head dims 64 / 128 / 256;
//    queries without any valid key (0); a bad index (NaN for the whole query, never a wild read);
//  * repeats are bit-identical (the per-(query, group) tickets are reset by the last block).
// Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaAttentionDecode : public GpuTest {};

enum class List { kCsa, kHca, kSliding };

struct DecCase {
  const char* name;
  int64_t T, H, Dh, R;  // R: rope dims
  int64_t Nw, Ne;       // window pool rows, entry rows
  int64_t W, C;         // window slots, compressed slots (S = W + C)
  List list;
  int64_t p0;           // position of the first query
  bool sink = true;
};

// Index lists shaped like attention_index's: window slots over the pool rows available at the
// query (a window not yet full pads with -1), compressed slots per `list`; the last query of a
// multi-token case has no key at all (out = 0).
std::vector<int32_t> make_idx(const DecCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const int64_t S = c.W + c.C;
  std::vector<int32_t> idx(static_cast<size_t>(c.T * S), -1);
  for (int64_t t = 0; t < c.T; ++t) {
    if (c.T > 1 && t == c.T - 1) break;
    const int64_t avail = std::min<int64_t>(c.W, std::min<int64_t>(c.Nw, c.p0 + t + 1));
    for (int64_t s = 0; s < avail; ++s) idx[t * S + s] = static_cast<int32_t>((c.Nw - avail + s) % c.Nw);
    if (c.list == List::kCsa) {
      for (int64_t s = c.W; s < S; ++s)
        if (u(rng) < 0.85f) idx[t * S + s] = static_cast<int32_t>(c.Nw + static_cast<int64_t>(u(rng) * c.Ne) % c.Ne);
    } else if (c.list == List::kHca) {
      const int64_t n = std::min<int64_t>(c.C, c.Ne - (c.T - 1 - t));  // later queries see more
      for (int64_t j = 0; j < n; ++j) idx[t * S + c.W + j] = static_cast<int32_t>(c.Nw + j);
    }
  }
  return idx;
}

// `base` as a chunk of T queries (the chunk's own keys join the pool).
DecCase at_t(const DecCase& base, int64_t T) {
  DecCase c = base;
  c.T = T;
  c.Nw = base.Nw + T - 1;
  return c;
}

std::vector<float> rope_inv_freq(int64_t R) {
  std::vector<float> f(static_cast<size_t>(R / 2));
  for (int64_t i = 0; i < R / 2; ++i) f[i] = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / R));
  return f;
}

// Runs fused CUDA, the CUDA composition and the CPU on one case; returns the fused output.
std::vector<float> check_case(ops::Backend& cpu, ops::Backend& cuda, const DecCase& c, DType dt, uint32_t seed,
                              const std::vector<int32_t>* idx_override = nullptr) {
  SCOPED_TRACE(str_cat(c.name, " T ", c.T, " ", dtype_label(dt)));
  const int64_t S = c.W + c.C;
  const OnBoth q = same_floats(cpu, cuda, random_normal(c.T * c.H * c.Dh, seed + 1), {c.T, c.H, c.Dh}, dt);
  const OnBoth kv = same_floats(cpu, cuda, random_normal(c.Nw * c.Dh, seed + 2), {c.Nw, c.Dh}, dt);
  OnBoth entries;
  if (c.Ne > 0) entries = same_floats(cpu, cuda, random_normal(c.Ne * c.Dh, seed + 3), {c.Ne, c.Dh}, dt);
  OnBoth sink;
  if (c.sink) sink = same_floats(cpu, cuda, random_normal(c.H, seed + 4), {c.H});
  const std::vector<int32_t> h_idx = idx_override ? *idx_override : make_idx(c, seed + 5);
  const OnBoth idx = same_ints(cpu, cuda, h_idx, {c.T, S});
  std::vector<int32_t> pos(static_cast<size_t>(c.T));
  for (int64_t t = 0; t < c.T; ++t) pos[t] = static_cast<int32_t>(c.p0 + t);
  const OnBoth p = same_ints(cpu, cuda, pos, {c.T});
  const OnBoth f = same_floats(cpu, cuda, rope_inv_freq(c.R), {c.R / 2});
  const OnBoth out = poisoned_both(cpu, cuda, {c.T, c.H, c.Dh}, dt);
  const ops::DeviceBuffer ref_out = poisoned(cuda, dt, {c.T, c.H, c.Dh});
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dh));
  auto ent = [&](const ops::DeviceBuffer& b) { return c.Ne > 0 ? b.view() : TensorView{}; };
  auto snk = [&](const ops::DeviceBuffer& b) { return c.sink ? b.view() : TensorView{}; };

  cuda.sparse_attention_rope(q.gpu.view(), kv.gpu.view(), ent(entries.gpu), idx.gpu.view(), snk(sink.gpu), scale,
                             p.gpu.view(), f.gpu.view(), c.R, out.gpu.view());
  cuda.sparse_attention(q.gpu.view(), kv.gpu.view(), ent(entries.gpu), idx.gpu.view(), snk(sink.gpu), scale,
                        ref_out.view());
  cuda.rope(ref_out.view(), p.gpu.view(), f.gpu.view(), c.R, true);
  cpu.sparse_attention_rope(q.cpu.view(), kv.cpu.view(), ent(entries.cpu), idx.cpu.view(), snk(sink.cpu), scale,
                            p.cpu.view(), f.cpu.view(), c.R, out.cpu.view());

  const std::vector<float> got = download_f32(cuda, out.gpu.view());
  EXPECT_TRUE(same_bits(got, download_f32(cuda, ref_out.view()))) << "fused vs sparse_attention + rope on CUDA";
  const std::vector<float> ref = download_f32(cpu, out.cpu.view());
  const double budget = dt == DType::kF32 ? kF32Budget : kBf16Budget;
  EXPECT_TRUE(within(got, ref, budget)) << "vs the CPU";
  const size_t dh = static_cast<size_t>(c.Dh);
  for (size_t row = 0; row < got.size() / dh; ++row) {
    const std::vector<float> g(got.begin() + row * dh, got.begin() + (row + 1) * dh);
    const std::vector<float> r(ref.begin() + row * dh, ref.begin() + (row + 1) * dh);
    bool all_zero = true;
    for (float v : r) all_zero &= v == 0.0f;
    if (all_zero) {  // no valid key: exactly 0
      for (size_t i = 0; i < dh; ++i)
        if (g[i] != 0.0f) {
          ADD_FAILURE() << "query " << row / c.H << " head " << row % c.H << ": no key but element " << i << " = "
                        << g[i];
          break;
        }
      continue;
    }
    const ::testing::AssertionResult ok = within(g, r, 3 * budget);
    if (!ok) {
      ADD_FAILURE() << "query " << row / c.H << ", head " << row % c.H << ": " << ok.message();
      break;
    }
  }
  return got;
}

// The decode lists of the tests below.
const DecCase kDecodeCases[] = {
    // name, T, H, Dh, R, Nw, Ne, W, C, list, p0
    // BF16/F16: every list takes the decode tensor-core kernel; F32: S <= kDecodeMaxSlots (256)
    // the FMA decode kernel, longer lists the split FMA path + merge + rope.
    {"CSA k100", 1, 64, 512, 64, 128, 300, 128, 100, List::kCsa, 1200},
    {"HCA 120 entries", 1, 64, 512, 64, 128, 120, 128, 120, List::kHca, 15400},
    {"CSA k512", 1, 64, 512, 64, 128, 1000, 128, 512, List::kCsa, 5000},
    {"HCA 3000 entries", 1, 64, 512, 64, 128, 3000, 128, 3000, List::kHca, 384000},
    {"sliding, window not full", 1, 64, 512, 64, 40, 0, 128, 0, List::kSliding, 39},
    {"sliding, full", 1, 64, 512, 64, 128, 0, 128, 0, List::kSliding, 777},
    {"CSA no sink", 1, 64, 512, 64, 128, 1000, 128, 512, List::kCsa, 5000, false},
    {"H6 Dh64 R16", 1, 6, 64, 16, 20, 50, 16, 40, List::kCsa, 100},
    {"H5 Dh128 R32 HCA", 1, 5, 128, 32, 20, 70, 16, 70, List::kHca, 9000},
    {"H16 Dh256 R64", 1, 16, 256, 64, 50, 400, 64, 300, List::kCsa, 1234},
};

TEST_F(CudaAttentionDecode, FusedEqualsCompositionAndCpu) {
  uint32_t seed = 31000;
  for (const DecCase& base : kDecodeCases) {
    for (const int64_t T : {1, 2, 3, 4, 5})
      for (const DType dt : {DType::kF32, DType::kBF16, DType::kF16})
        check_case(*cpu, *cuda, at_t(base, T), dt, seed += 10);
  }
}

// A prefill-sized chunk takes the composition (tensor cores, then rope).
TEST_F(CudaAttentionDecode, PrefillTakesTheComposition) {
  const DecCase c{"CSA prefill", 64, 64, 512, 64, 191, 600, 128, 512, List::kCsa, 100};
  for (const DType dt : {DType::kF32, DType::kBF16}) check_case(*cpu, *cuda, c, dt, 32000);
}

// Same inputs, same bits, call after call (the tickets are left at zero).
TEST_F(CudaAttentionDecode, RepeatsBitIdentical) {
  const DecCase cases[] = {
      {"CSA k512 T2", 2, 64, 512, 64, 129, 1000, 128, 512, List::kCsa, 5000},
      {"HCA T1", 1, 64, 512, 64, 128, 3000, 128, 3000, List::kHca, 384000},
  };
  for (const DecCase& c : cases) {
    for (const DType dt : {DType::kF32, DType::kBF16}) {
      const std::vector<float> a = check_case(*cpu, *cuda, c, dt, 33000);
      const std::vector<float> b = check_case(*cpu, *cuda, c, dt, 33000);
      SCOPED_TRACE(str_cat(c.name, " ", dtype_label(dt), " repeated"));
      EXPECT_TRUE(same_bits(b, a));
    }
  }
}

// No valid key anywhere: 0 (rope of 0 stays 0). One index outside the key space in query 0: the
// whole query NaN, query 1 finite.
void check_no_key_and_bad_index(ops::Backend& cuda_be, const std::vector<DType>& dtypes) {
  ops::Backend* cuda = &cuda_be;
  const int64_t T = 2, H = 64, Dh = 512, R = 64, Nw = 128, Ne = 1000, S = 640;
  for (const DType dt : dtypes) {
    SCOPED_TRACE(dtype_label(dt));
    ops::DeviceBuffer q = upload_f32(*cuda, random_normal(T * H * Dh, 34001), {T, H, Dh}, dt);
    ops::DeviceBuffer kv = upload_f32(*cuda, random_normal(Nw * Dh, 34002), {Nw, Dh}, dt);
    ops::DeviceBuffer entries = upload_f32(*cuda, random_normal(Ne * Dh, 34003), {Ne, Dh}, dt);
    ops::DeviceBuffer sink = upload_f32(*cuda, random_normal(H, 34004), {H});
    const std::vector<int32_t> pos = {1000, 1001};
    ops::DeviceBuffer d_pos = upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {T}, const_cast<int32_t*>(pos.data())});
    ops::DeviceBuffer freq = upload_f32(*cuda, rope_inv_freq(R), {R / 2});
    std::vector<int32_t> none(static_cast<size_t>(T * S), -1);
    std::vector<int32_t> bad(static_cast<size_t>(T * S));
    for (int64_t i = 0; i < T * S; ++i) bad[static_cast<size_t>(i)] = static_cast<int32_t>(i % (Nw + Ne));
    bad[600] = static_cast<int32_t>(Nw + Ne);  // query 0, one past the last row, in a late split
    for (int which = 0; which < 2; ++which) {
      const std::vector<int32_t>& h_idx = which == 0 ? none : bad;
      ops::DeviceBuffer d_idx =
          upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {T, S}, const_cast<int32_t*>(h_idx.data())});
      ops::DeviceBuffer out = poisoned(*cuda, dt, {T, H, Dh});
      cuda->sparse_attention_rope(q.view(), kv.view(), entries.view(), d_idx.view(), sink.view(), 0.04f, d_pos.view(),
                                  freq.view(), R, out.view());
      const std::vector<float> got = download_f32(*cuda, out.view());
      for (size_t i = 0; i < got.size(); ++i) {
        if (which == 0) {
          ASSERT_EQ(got[i], 0.0f) << "no key, element " << i;
        } else if (static_cast<int64_t>(i) < H * Dh) {
          ASSERT_TRUE(std::isnan(got[i])) << "bad index, query 0, element " << i;
        } else {
          ASSERT_TRUE(std::isfinite(got[i])) << "query 1, element " << i;
        }
      }
    }
  }
}

TEST_F(CudaAttentionDecode, NoKeyAndBadIndex) { check_no_key_and_bad_index(*cuda, {DType::kF32, DType::kBF16}); }

}  // namespace
}  // namespace clawmine::test
