// The decode-sized paths of the CUDA lightning-indexer ops (T <= 16: indexer.cu's tile kernel,
// topk.cu's rank and wide kernels) at V4-Flash's shapes, fresh random inputs, outputs poisoned:
//  * indexer_scores, 64 heads x 128 over N = 512, 4096, 32768 keys (the entry store at contexts
//    2K, 16K, 128K; causal limit inside the last tile, or half the tiles masked) and small odd
//    dims: within the F32/BF16 budgets of the CPU, the -inf mask equal, and every row BIT-EQUAL
//    to the same token's row from the prefill kernel (T = 17), so the path never changes a score;
//  * topk k = 512 / 2048 at T = 1 and 4 over N = 512 .. 32768 (rank kernel up to 2048, wide
//    kernel above: typical values, masked tails shorter and longer than k, heavy ties that
//    overflow the wide kernel's shared-memory candidates, specials): indices equal to the CPU's,
//    repeated calls included (the wide kernel's counters reset themselves); and the top-512 of
//    the GPU's own decode scores equal to the CPU's top-512 of the same scores.
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

class CudaIndexerDecode : public GpuTest {};

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kPrefillT = 17;  // above the tile kernel's T limit (16): the prefill kernel

// ---- indexer_scores ----------------------------------------------------------------------------

struct ScoreInputs {
  int64_t T, Hi, Di, N, rate;
  std::vector<float> q, keys, w;  // rounded to the GPU dtypes
  std::vector<int32_t> pos;
  DType q_dtype, w_dtype;
};

ScoreInputs score_inputs(int64_t T, int64_t Hi, int64_t Di, int64_t N, int64_t p0, DType q_dtype, DType w_dtype,
                         uint32_t seed) {
  ScoreInputs in{T, Hi, Di, N, 4, {}, {}, {}, {}, q_dtype, w_dtype};
  in.q = rounded_to(random_normal(static_cast<size_t>(T * Hi * Di), seed + 1), q_dtype);
  in.keys = rounded_to(random_normal(static_cast<size_t>(N * Di), seed + 2), q_dtype);
  in.w = rounded_to(random_normal(static_cast<size_t>(T * Hi), seed + 3), w_dtype);
  for (int64_t t = 0; t < T; ++t) in.pos.push_back(static_cast<int32_t>(p0 + t));
  return in;
}

// Scores [n, N] of tokens [t0, t0 + n), uploaded as their own tensors (CPU: F32).
std::vector<float> scores_of(ops::Backend& be, bool is_cpu, const ScoreInputs& in, int64_t t0, int64_t n) {
  const int64_t Hi = in.Hi, Di = in.Di, N = in.N;
  const std::vector<float> q(in.q.begin() + t0 * Hi * Di, in.q.begin() + (t0 + n) * Hi * Di);
  const std::vector<float> w(in.w.begin() + t0 * Hi, in.w.begin() + (t0 + n) * Hi);
  std::vector<int32_t> pos(in.pos.begin() + t0, in.pos.begin() + t0 + n);
  const ops::DeviceBuffer dq = upload_f32(be, q, {n, Hi, Di}, is_cpu ? DType::kF32 : in.q_dtype);
  const ops::DeviceBuffer dk = upload_f32(be, in.keys, {N, Di}, is_cpu ? DType::kF32 : in.q_dtype);
  const ops::DeviceBuffer dw = upload_f32(be, w, {n, Hi}, is_cpu ? DType::kF32 : in.w_dtype);
  const ops::DeviceBuffer dp = upload_raw(be, TensorView{DType::kI32, Device::kCpu, {n}, pos.data()});
  const ops::DeviceBuffer out = poisoned(be, DType::kF32, {n, N});
  const float ws = 1.0f / std::sqrt(static_cast<float>(Di)) / std::sqrt(static_cast<float>(Hi));
  be.indexer_scores(dq.view(), dk.view(), dw.view(), ws, dp.view(), in.rate, out.view());
  return download_f32(be, out.view());
}

std::vector<float> row_of(const std::vector<float>& m, int64_t N, int64_t t0, int64_t n) {
  return std::vector<float>(m.begin() + t0 * N, m.begin() + (t0 + n) * N);
}

// Token 0 at T = 1 against the CPU; T = 1 rows (tokens 0, 9, 16) and the T = 5 rows against the
// prefill kernel's rows, bit for bit.
void check_decode_scores(ops::Backend& cpu, ops::Backend& cuda, const ScoreInputs& in, const std::string& name) {
  SCOPED_TRACE(str_cat(name, " N ", in.N, " Hi ", in.Hi, " Di ", in.Di, " q/keys ", dtype_label(in.q_dtype),
                       " weights ", dtype_label(in.w_dtype), " p0 ", in.pos[0]));
  const std::vector<float> prefill = scores_of(cuda, false, in, 0, kPrefillT);
  const std::vector<float> got = scores_of(cuda, false, in, 0, 1), ref = scores_of(cpu, true, in, 0, 1);
  const bool f32 = in.q_dtype == DType::kF32 && in.w_dtype == DType::kF32;
  EXPECT_TRUE(within(got, ref, f32 ? kF32Budget : kBf16Budget)) << "T = 1 against the CPU";
  for (size_t j = 0; j < ref.size(); ++j) ASSERT_EQ(got[j] == -kInf, ref[j] == -kInf) << "mask differs at key " << j;
  EXPECT_TRUE(same_bits(got, row_of(prefill, in.N, 0, 1))) << "token 0: T = 1 against the prefill kernel";
  for (const int64_t t : {int64_t{9}, int64_t{16}})
    EXPECT_TRUE(same_bits(scores_of(cuda, false, in, t, 1), row_of(prefill, in.N, t, 1)))
        << "token " << t << ": T = 1 against the prefill kernel";
  EXPECT_TRUE(same_bits(scores_of(cuda, false, in, 0, 5), row_of(prefill, in.N, 0, 5)))
      << "T = 5 against the prefill kernel";
}

TEST_F(CudaIndexerDecode, ScoresV4FlashMatchCpuAndPrefillBits) {
  uint32_t seed = 11000;
  for (const int64_t N : {int64_t{512}, int64_t{4096}, int64_t{32768}}) {
    // p0: the causal limit inside the last tile (N - 8 .. N - 4 visible), then half the store.
    for (const int64_t p0 : {4 * N - 30, 2 * N + 1}) {
      check_decode_scores(*cpu, *cuda, score_inputs(kPrefillT, 64, 128, N, p0, DType::kBF16, DType::kF32, seed += 10),
                          "V4-Flash");
      if (p0 == 4 * N - 30) {
        check_decode_scores(*cpu, *cuda,
                            score_inputs(kPrefillT, 64, 128, N, p0, DType::kBF16, DType::kBF16, seed += 10), "V4-Flash");
        check_decode_scores(*cpu, *cuda, score_inputs(kPrefillT, 64, 128, N, p0, DType::kF32, DType::kF32, seed += 10),
                            "V4-Flash");
      }
    }
  }
}

TEST_F(CudaIndexerDecode, ScoresSmallOddDimsMatchCpuAndPrefillBits) {
  struct Case {
    int64_t Hi, Di, N, p0;
  };
  // Heads below 64 (zero-padded), head dims that are not a multiple of 8 (scalar staging), N not
  // a multiple of the tile, everything visible or nothing.
  const Case cases[] = {{3, 20, 37, 200}, {17, 33, 300, 1000}, {1, 1, 129, 600}, {64, 64, 257, 900}, {16, 128, 40, 2}};
  uint32_t seed = 12000;
  for (const Case& c : cases)
    for (const DType dt : {DType::kF32, DType::kBF16})
      check_decode_scores(*cpu, *cuda, score_inputs(kPrefillT, c.Hi, c.Di, c.N, c.p0, dt, dt, seed += 10), "odd");
}

// ---- topk --------------------------------------------------------------------------------------

enum class Fill { kNormal, kValidPrefix, kFewValues, kAllEqual, kSpecials };

// T rows of N values; kValidPrefix: the first `valid` of each row finite, the rest -inf (the
// indexer's causal mask).
std::vector<float> topk_values(int64_t T, int64_t N, Fill fill, int64_t valid, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v = random_normal(static_cast<size_t>(T * N), seed);
  std::uniform_int_distribution<int> small(0, 7);
  const float specials[] = {std::nanf(""), -kInf, kInf, -0.0f, 0.0f, 1.0f, -1.0f, FLT_MAX, -FLT_MAX,
                            FLT_TRUE_MIN, -FLT_TRUE_MIN, FLT_MIN, 2.5f, 0.0f};
  std::uniform_int_distribution<int> pick(0, static_cast<int>(sizeof(specials) / sizeof(float)) - 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < N; ++j) {
      float& x = v[static_cast<size_t>(t * N + j)];
      switch (fill) {
        case Fill::kNormal: break;
        case Fill::kValidPrefix: if (j >= valid - t) x = -kInf; break;
        case Fill::kFewValues: x = static_cast<float>(small(rng)) - 3.0f; break;
        case Fill::kAllEqual: x = 0.25f; break;
        case Fill::kSpecials: x = specials[pick(rng)]; break;
      }
    }
  return v;
}

void check_topk(ops::Backend& cpu, ops::Backend& cuda, const std::vector<float>& host, int64_t T, int64_t N, int64_t k,
                const std::string& what) {
  SCOPED_TRACE(str_cat(what, ": T ", T, " N ", N, " k ", k));
  const OnBoth values = same_floats(cpu, cuda, host, {T, N});
  const OnBoth out = poisoned_both(cpu, cuda, {T, k}, DType::kI32);
  cpu.topk(values.cpu.view(), k, out.cpu.view());
  cuda.topk(values.gpu.view(), k, out.gpu.view());
  const std::vector<int32_t> got = download_as<int32_t>(cuda, out.gpu.view());
  const std::vector<int32_t> ref = download_as<int32_t>(cpu, out.cpu.view());
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], ref[i]) << "row " << i / k << ", slot " << i % k;
}

TEST_F(CudaIndexerDecode, TopkDecodeEqualsCpu) {
  struct Case {
    int64_t T, N, k;
    Fill fill;
    int64_t valid;  // kValidPrefix
  };
  const Case cases[] = {
      // decode at contexts 2K / 16K / 128K: N = 512 (rank), 4096 and 32768 (wide)
      {1, 512, 512, Fill::kNormal, 0},          {1, 512, 512, Fill::kValidPrefix, 300},
      {1, 4096, 512, Fill::kNormal, 0},         {1, 4096, 512, Fill::kValidPrefix, 3000},
      {1, 32768, 512, Fill::kNormal, 0},        {1, 32768, 512, Fill::kValidPrefix, 20001},
      {1, 32768, 512, Fill::kValidPrefix, 511}, {1, 32768, 512, Fill::kValidPrefix, 512},
      {1, 32768, 512, Fill::kValidPrefix, 0},   {1, 32768, 512, Fill::kFewValues, 0},
      {1, 32768, 2048, Fill::kNormal, 0},       {1, 32768, 512, Fill::kSpecials, 0},
      {1, 8192, 512, Fill::kAllEqual, 0},       {1, 2048, 512, Fill::kNormal, 0},
      {1, 2049, 512, Fill::kNormal, 0},         {1, 2048, 2048, Fill::kFewValues, 0},
      {1, 100, 512, Fill::kValidPrefix, 60},    {1, 1, 512, Fill::kNormal, 0},
      // small batches (MTP, several sequences)
      {4, 512, 512, Fill::kValidPrefix, 400},   {4, 4096, 512, Fill::kNormal, 0},
      {4, 32768, 512, Fill::kValidPrefix, 9000}, {16, 1024, 512, Fill::kFewValues, 0},
      {16, 32768, 512, Fill::kNormal, 0},       {3, 700, 1, Fill::kSpecials, 0},
  };
  uint32_t seed = 13000;
  for (int pass = 0; pass < 2; ++pass)  // again: state the wide kernel keeps must be reset
    for (const Case& c : cases)
      check_topk(*cpu, *cuda, topk_values(c.T, c.N, c.fill, c.valid, ++seed), c.T, c.N, c.k,
                 str_cat("fill ", static_cast<int>(c.fill), " valid ", c.valid, " pass ", pass));
}

// The real decode pair: GPU scores over a 128K-context store, then the top-512 of exactly those
// scores on both backends.
TEST_F(CudaIndexerDecode, TopkOfGpuDecodeScoresEqualsCpu) {
  uint32_t seed = 14000;
  for (const int64_t N : {int64_t{512}, int64_t{4096}, int64_t{32768}}) {
    const ScoreInputs in = score_inputs(1, 64, 128, N, 4 * N - 7, DType::kBF16, DType::kBF16, seed += 10);
    check_topk(*cpu, *cuda, scores_of(*cuda, false, in, 0, 1), 1, N, 512, "GPU decode scores");
  }
}

}  // namespace
}  // namespace clawmine::test
