// The CUDA lightning-indexer ops (indexer.cu, topk.cu) against the CPU reference on the same
// fresh random inputs, outputs poisoned first:
//  * indexer_scores: F32 within 1e-5 and BF16 q/keys (F32 or BF16 head weights) within 1e-2, the
//    causal -inf tail equal, at V4-Flash dims (64 heads x 128, rate 4, N up to 32768, T in
//    {1, 5, 300} with the causal limit inside the key range) and small odd dims (heads not a
//    multiple of 16, odd head dims, N not a multiple of the 128-key tile);
//  * topk: exactly equal indices, for k in {1, 7, 512, 2048}, N up to 262144, T in {1, 5, 300},
//    rows with masked (-inf) tails, heavy ties (few distinct values, all equal), NaN, +-inf,
//    -0 vs +0 and subnormals, fewer pickable values than k (-1 slots), k > N;
//  * topk at prefill shapes (T > 16: the select kernel, every register layout and the streaming
//    one): the indexer's causal mask with live counts below, across and far above k = 512, the
//    2K / 8K prompt geometries (N = 512 / 2048), ties at the k-th value, all-equal rows, specials,
//    rows with nothing pickable, rows of different kinds in one call; and the top-512 of the GPU's
//    own causal prefill scores.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaIndexer : public GpuTest {};

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- indexer_scores ----------------------------------------------------------------------------

struct ScoresCase {
  const char* name;
  int64_t T, Hi, Di, N, rate, p0;
};

void check_scores(ops::Backend& cpu, ops::Backend& cuda, const ScoresCase& c, DType q_dtype, DType w_dtype,
                  uint32_t seed) {
  SCOPED_TRACE(str_cat(c.name, " q/keys ", dtype_label(q_dtype), " weights ", dtype_label(w_dtype)));
  std::vector<int32_t> pos(static_cast<size_t>(c.T));
  for (int64_t t = 0; t < c.T; ++t) pos[t] = static_cast<int32_t>(c.p0 + t);
  const OnBoth positions = same_ints(cpu, cuda, pos, {c.T});
  const OnBoth q = same_floats(cpu, cuda, random_normal(c.T * c.Hi * c.Di, seed + 1), {c.T, c.Hi, c.Di}, q_dtype);
  const OnBoth keys = same_floats(cpu, cuda, random_normal(c.N * c.Di, seed + 2), {c.N, c.Di}, q_dtype);
  const OnBoth w = same_floats(cpu, cuda, random_normal(c.T * c.Hi, seed + 3), {c.T, c.Hi}, w_dtype);
  const OnBoth scores = poisoned_both(cpu, cuda, {c.T, c.N});
  const float weight_scale = 1.0f / std::sqrt(static_cast<float>(c.Di)) / std::sqrt(static_cast<float>(c.Hi));
  cpu.indexer_scores(q.cpu.view(), keys.cpu.view(), w.cpu.view(), weight_scale, positions.cpu.view(), c.rate,
                     scores.cpu.view());
  cuda.indexer_scores(q.gpu.view(), keys.gpu.view(), w.gpu.view(), weight_scale, positions.gpu.view(), c.rate,
                      scores.gpu.view());
  const std::vector<float> got = download_f32(cuda, scores.gpu.view()), ref = download_f32(cpu, scores.cpu.view());
  // Both compute from the same (rounded) operands in float32 or better: F32's budget either way.
  EXPECT_TRUE(within(got, ref, q_dtype == DType::kF32 && w_dtype == DType::kF32 ? kF32Budget : kBf16Budget));
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(got[i] == -kInf, ref[i] == -kInf) << "mask differs at " << i;
}

TEST_F(CudaIndexer, ScoresV4FlashDims) {
  const ScoresCase cases[] = {
      // name, T, Hi, Di, N, rate, p0
      {"decode all keys visible", 1, 64, 128, 32768, 4, 4 * 32768 + 5},
      {"decode causal limit inside", 1, 64, 128, 32768, 4, 100001},
      {"T5 limit crosses the last tile", 5, 64, 128, 8192, 4, 4 * 8192 - 9},
      {"prefill 300", 300, 64, 128, 1024, 4, 4 * 1024 - 700},
      {"prefill 300 from 0", 300, 64, 128, 75, 4, 0},
  };
  uint32_t seed = 7000;
  for (const ScoresCase& c : cases) {
    check_scores(*cpu, *cuda, c, DType::kF32, DType::kF32, seed += 10);
    check_scores(*cpu, *cuda, c, DType::kBF16, DType::kF32, seed += 10);
  }
  check_scores(*cpu, *cuda, cases[2], DType::kBF16, DType::kBF16, seed += 10);
}

TEST_F(CudaIndexer, ScoresSmallOddDims) {
  const ScoresCase cases[] = {
      {"Hi3 Di20 N37", 7, 3, 20, 37, 3, 90},       {"Hi17 Di33 N300", 5, 17, 33, 300, 4, 1000},
      {"Hi1 Di1 N129", 3, 1, 1, 129, 1, 127},      {"Hi16 Di128 N1 rate 128", 5, 16, 128, 1, 128, 125},
      {"Hi64 Di64 N257 T300", 300, 64, 64, 257, 2, 300},
  };
  uint32_t seed = 8000;
  for (const ScoresCase& c : cases) {
    check_scores(*cpu, *cuda, c, DType::kF32, DType::kF32, seed += 10);
    check_scores(*cpu, *cuda, c, DType::kBF16, DType::kBF16, seed += 10);
  }
}

// ---- topk --------------------------------------------------------------------------------------

enum class Fill { kNormal, kMaskedTail, kFewValues, kAllEqual, kSpecials };

std::vector<float> topk_values(int64_t T, int64_t N, Fill fill, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v = random_normal(T * N, seed);
  std::uniform_int_distribution<int> small(0, 7);
  const float specials[] = {std::nanf(""), -kInf, kInf, -0.0f, 0.0f, 1.0f, -1.0f, FLT_MAX, -FLT_MAX,
                            FLT_TRUE_MIN, -FLT_TRUE_MIN, FLT_MIN, 1.0f, 0.0f};
  std::uniform_int_distribution<int> pick(0, static_cast<int>(sizeof(specials) / sizeof(float)) - 1);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t valid = fill == Fill::kMaskedTail ? (t * 7919 + 13) % (N + 1) : N;  // causal-like mask
    for (int64_t j = 0; j < N; ++j) {
      float& x = v[t * N + j];
      switch (fill) {
        case Fill::kNormal: break;
        case Fill::kMaskedTail: if (j >= valid) x = -kInf; break;
        case Fill::kFewValues: x = static_cast<float>(small(rng)) - 3.0f; break;
        case Fill::kAllEqual: x = 0.5f; break;
        case Fill::kSpecials: x = specials[pick(rng)]; break;
      }
    }
  }
  return v;
}

void check_topk(ops::Backend& cpu, ops::Backend& cuda, int64_t T, int64_t N, int64_t k, Fill fill, uint32_t seed) {
  SCOPED_TRACE(str_cat("T ", T, " N ", N, " k ", k, " fill ", static_cast<int>(fill)));
  const OnBoth values = same_floats(cpu, cuda, topk_values(T, N, fill, seed), {T, N});
  const OnBoth out = poisoned_both(cpu, cuda, {T, k}, DType::kI32);
  cpu.topk(values.cpu.view(), k, out.cpu.view());
  cuda.topk(values.gpu.view(), k, out.gpu.view());
  const std::vector<int32_t> got = download_as<int32_t>(cuda, out.gpu.view());
  const std::vector<int32_t> ref = download_as<int32_t>(cpu, out.cpu.view());
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], ref[i]) << "row " << i / k << ", slot " << i % k;
}

TEST_F(CudaIndexer, TopkEqualsCpu) {
  struct Case {
    int64_t T, N, k;
    Fill fill;
  };
  const Case cases[] = {
      {1, 262144, 2048, Fill::kNormal},  {1, 262144, 512, Fill::kMaskedTail}, {5, 32768, 2048, Fill::kMaskedTail},
      {5, 32768, 512, Fill::kFewValues}, {300, 4096, 512, Fill::kMaskedTail}, {300, 1000, 2048, Fill::kNormal},
      {5, 5000, 2048, Fill::kAllEqual},  {5, 1000, 100, Fill::kSpecials},     {5, 100, 512, Fill::kMaskedTail},
      {7, 37, 64, Fill::kNormal},        {7, 37, 1, Fill::kFewValues},        {7, 37, 7, Fill::kSpecials},
      {3, 1, 7, Fill::kNormal},          {300, 2048, 2048, Fill::kFewValues}, {1, 65537, 7, Fill::kFewValues},
  };
  uint32_t seed = 9000;
  for (const Case& c : cases) check_topk(*cpu, *cuda, c.T, c.N, c.k, c.fill, ++seed);
}

// ---- topk at prefill shapes (topk_select_kernel) ----------------------------------------------
// T > 16 rows and T * N^2 > 2^22 (past the rank and wide kernels). kCausal: row t is token
// p0 + t of a prompt scored by the indexer at rate 4, so its first (p0 + t + 1) / 4 entries are
// live and the rest -inf (the indexer's mask); p0 < 0: no mask. kMixed: row t is filled like
// fill (t % 5) of {normal, few values, all equal, specials, nothing pickable}.

enum class PFill { kNormal, kFewValues, kAllEqual, kSpecials, kNothing, kMixed };

std::vector<float> prefill_values(int64_t T, int64_t N, PFill fill, int64_t p0, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v = random_normal(T * N, seed);
  std::uniform_int_distribution<int> small(0, 7), coin(0, 1);
  const float specials[] = {std::nanf(""), -kInf, kInf, -0.0f, 0.0f, 1.0f, -1.0f, FLT_MAX, -FLT_MAX,
                            FLT_TRUE_MIN, -FLT_TRUE_MIN, FLT_MIN, 1.0f, 0.0f};
  std::uniform_int_distribution<int> pick(0, static_cast<int>(sizeof(specials) / sizeof(float)) - 1);
  const PFill cycle[] = {PFill::kNormal, PFill::kFewValues, PFill::kAllEqual, PFill::kSpecials, PFill::kNothing};
  for (int64_t t = 0; t < T; ++t) {
    const int64_t live = p0 < 0 ? N : std::min<int64_t>(N, (p0 + t + 1) / 4);
    const PFill f = fill == PFill::kMixed ? cycle[t % 5] : fill;
    for (int64_t j = 0; j < N; ++j) {
      float& x = v[t * N + j];
      switch (f) {
        case PFill::kNormal: case PFill::kMixed: break;
        case PFill::kFewValues: x = static_cast<float>(small(rng)) - 3.0f; break;
        case PFill::kAllEqual: x = -0.75f; break;
        case PFill::kSpecials: x = specials[pick(rng)]; break;
        case PFill::kNothing: x = coin(rng) ? std::nanf("") : -kInf; break;
      }
      if (j >= live) x = -kInf;
    }
  }
  return v;
}

void check_topk_host(ops::Backend& cpu, ops::Backend& cuda, const std::vector<float>& host, int64_t T, int64_t N,
                     int64_t k, const std::string& what) {
  SCOPED_TRACE(str_cat(what, ": T ", T, " N ", N, " k ", k));
  const OnBoth values = same_floats(cpu, cuda, host, {T, N});
  const OnBoth out = poisoned_both(cpu, cuda, {T, k}, DType::kI32);
  cpu.topk(values.cpu.view(), k, out.cpu.view());
  cuda.topk(values.gpu.view(), k, out.gpu.view());
  const std::vector<int32_t> got = download_as<int32_t>(cuda, out.gpu.view());
  const std::vector<int32_t> ref = download_as<int32_t>(cpu, out.cpu.view());
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], ref[i]) << "row " << i / k << ", slot " << i % k;
}

TEST_F(CudaIndexer, TopkPrefillEqualsCpu) {
  struct Case {
    int64_t T, N, k;
    PFill fill;
    int64_t p0;  // causal mask from token p0; -1: none
  };
  const Case cases[] = {
      // V4-Flash prefill (rate 4, top-512): live counts crossing k, far above it, from 0
      {300, 2048, 512, PFill::kNormal, 4 * 512 - 149},
      {300, 2048, 512, PFill::kNormal, 4 * 2048 - 1200},
      {300, 2048, 512, PFill::kNormal, 0},
      {300, 2048, 512, PFill::kFewValues, 4 * 512 - 149},  // ties at the k-th value, masked
      {2048, 512, 512, PFill::kNormal, 0},                 // a 2K prompt: every row takes all
      {8192, 2048, 512, PFill::kNormal, 0},                // an 8K prompt
      {64, 4096, 512, PFill::kNormal, -1},
      {64, 4096, 512, PFill::kFewValues, -1},
      {64, 2048, 512, PFill::kAllEqual, -1},               // the 512 lowest indices
      {64, 2048, 512, PFill::kSpecials, -1},
      {64, 2048, 512, PFill::kNothing, -1},                // all -1
      {300, 2048, 512, PFill::kMixed, 4 * 2048 - 1200},
      // every register layout (N <= 512, 1024, 2048, 4096, 8192) and the streaming one (> 8192)
      {64, 300, 512, PFill::kNormal, -1},      {64, 300, 100, PFill::kFewValues, -1},
      {33, 1000, 100, PFill::kNormal, -1},     {33, 1000, 7, PFill::kMixed, -1},
      {33, 1000, 1, PFill::kSpecials, -1},     {40, 3001, 2048, PFill::kNormal, 4 * 3001 - 40},
      {40, 8192, 512, PFill::kMixed, -1},      {20, 8192, 4096, PFill::kFewValues, -1},
      {20, 8193, 512, PFill::kNormal, -1},     {20, 8193, 512, PFill::kMixed, -1},
      {17, 40000, 512, PFill::kNormal, 4 * 40000 - 100000}, {17, 65537, 2048, PFill::kFewValues, -1},
      {17, 20000, 4096, PFill::kAllEqual, -1}, {17, 100000, 512, PFill::kMixed, 4 * 100000 - 50},
  };
  uint32_t seed = 9500;
  for (const Case& c : cases)
    check_topk_host(*cpu, *cuda, prefill_values(c.T, c.N, c.fill, c.p0, ++seed), c.T, c.N, c.k,
                    str_cat("fill ", static_cast<int>(c.fill), " p0 ", c.p0));
}

// The real prefill pair: the GPU's causal BF16 indexer scores for 300 tokens (the tensor-core
// path) over 2048 entries, live counts crossing 512, then the top-512 of those scores on both.
TEST_F(CudaIndexer, TopkOfGpuPrefillScoresEqualsCpu) {
  const int64_t T = 300, Hi = 64, Di = 128, N = 2048, p0 = 4 * 512 - 149;
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(p0 + t);
  const OnBoth p = same_ints(*cpu, *cuda, pos, {T});
  const ops::DeviceBuffer q = upload_f32(*cuda, random_normal(T * Hi * Di, 9601), {T, Hi, Di}, DType::kBF16);
  const ops::DeviceBuffer keys = upload_f32(*cuda, random_normal(N * Di, 9602), {N, Di}, DType::kBF16);
  const ops::DeviceBuffer w = upload_f32(*cuda, random_normal(T * Hi, 9603), {T, Hi}, DType::kBF16);
  const ops::DeviceBuffer scores = poisoned(*cuda, DType::kF32, {T, N});
  const float ws = 1.0f / std::sqrt(static_cast<float>(Di)) / std::sqrt(static_cast<float>(Hi));
  cuda->indexer_scores(q.view(), keys.view(), w.view(), ws, p.gpu.view(), 4, scores.view());
  const std::vector<float> host = download_f32(*cuda, scores.view());
  int64_t live = 0;
  for (const float x : host) live += x != -kInf;
  ASSERT_GT(live, 0);
  check_topk_host(*cpu, *cuda, host, T, N, 512, "GPU prefill scores");
}

}  // namespace
}  // namespace clawmine::test
