// The tensor-core indexer_scores kernel (indexer_mma.cu), called through its launcher on device
// buffers, against the CPU backend's indexer_scores on the same fresh random inputs (BF16 q/keys,
// F32 or BF16 head weights), scores poisoned with NaN first:
//  * values within the BF16 budget (rel L2 1e-2) and the causal -inf mask equal, for T in
//    {1, 5, 64, 300, 301} x N in {64, 200, 2048} (T and N not multiples of the 4-token / 64-key
//    tiles; few tokens split the keys over blocks), positions ascending from 0 (leading tokens
//    with no valid key), a chunk ending past N (limits crossing tiles, negative positions), and
//    shuffled random positions (limits not monotonic in t); rates 1, 4 and 128;
//  * bit-identical results on a second launch;
//  * a NaN in one element of q gives NaN in exactly that token's valid scores;
//  * unsupported shapes or alignments return false and launch nothing (runs without a GPU).
// Skips without a GPU (except the last).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/indexer_mma.cuh"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaIndexerMma : public GpuTest {};

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kHi = 64, kDi = 128;

enum class Pos { kFromZero, kEndingPastN, kRandom };

std::vector<int32_t> make_positions(int64_t T, int64_t N, int64_t rate, Pos kind, uint32_t seed) {
  std::vector<int32_t> pos(static_cast<size_t>(T));
  std::mt19937 rng(seed);
  for (int64_t t = 0; t < T; ++t) {
    switch (kind) {
      case Pos::kFromZero: {  // limits sweep 0 .. about N (the first rate - 1 tokens: none)
        const int64_t stride = std::max<int64_t>(1, rate * N / std::max<int64_t>(T, 1));
        pos[t] = static_cast<int32_t>(t * stride);
        break;
      }
      case Pos::kEndingPastN:  // the last tokens see all N keys, early ones fewer (or none)
        pos[t] = static_cast<int32_t>(rate * N + 5 - T + t);
        break;
      case Pos::kRandom:
        pos[t] = std::uniform_int_distribution<int32_t>(-8, static_cast<int32_t>(rate * N + 8))(rng);
        break;
    }
  }
  return pos;
}

struct Outcome {
  std::vector<float> got, ref;
  std::vector<int32_t> pos;
};

// One launch on poisoned scores; returns the launcher's answer.
bool launch(const OnBoth& q, const OnBoth& keys, const OnBoth& w, bool w_bf16, float scale, const OnBoth& pos,
            int64_t rate, int64_t T, int64_t N, const OnBoth& scores) {
  const bool ok = backend::cuda::launch_indexer_scores_mma(
      q.gpu.view().as<__nv_bfloat16>(), keys.gpu.view().as<__nv_bfloat16>(), w.gpu.view().data, w_bf16, scale,
      pos.gpu.view().as<int32_t>(), rate, T, kHi, kDi, N, scores.gpu.view().as<float>(), nullptr);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return ok;
}

// q [T, 64, 128] and keys [N, 128] in BF16, weights in w_dtype; nan_at >= 0 poisons that q element.
Outcome run_case(ops::Backend& cpu, ops::Backend& cuda, int64_t T, int64_t N, int64_t rate, Pos kind, DType w_dtype,
             uint32_t seed, int64_t nan_at = -1) {
  Outcome r;
  r.pos = make_positions(T, N, rate, kind, seed);
  std::vector<float> qv = random_normal(static_cast<size_t>(T * kHi * kDi), seed + 1);
  if (nan_at >= 0) qv[static_cast<size_t>(nan_at)] = std::nanf("");
  const OnBoth positions = same_ints(cpu, cuda, r.pos, {T});
  const OnBoth q = same_floats(cpu, cuda, qv, {T, kHi, kDi}, DType::kBF16);
  const OnBoth keys = same_floats(cpu, cuda, random_normal(static_cast<size_t>(N * kDi), seed + 2), {N, kDi}, DType::kBF16);
  const OnBoth w = same_floats(cpu, cuda, random_normal(static_cast<size_t>(T * kHi), seed + 3), {T, kHi}, w_dtype);
  const OnBoth scores = poisoned_both(cpu, cuda, {T, N});
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDi)) / std::sqrt(static_cast<float>(kHi));
  cpu.indexer_scores(q.cpu.view(), keys.cpu.view(), w.cpu.view(), scale, positions.cpu.view(), rate,
                     scores.cpu.view());
  cuda.synchronize();  // uploads done before the launch on the legacy default stream
  EXPECT_TRUE(launch(q, keys, w, w_dtype == DType::kBF16, scale, positions, rate, T, N, scores));
  r.got = download_f32(cuda, scores.gpu.view());
  r.ref = download_f32(cpu, scores.cpu.view());
  // A second launch over fresh poison: the same bits (fixed reduction order).
  cuda.fill(scores.gpu.view(), std::nanf(""));
  cuda.synchronize();
  EXPECT_TRUE(launch(q, keys, w, w_dtype == DType::kBF16, scale, positions, rate, T, N, scores));
  EXPECT_TRUE(same_bits(download_f32(cuda, scores.gpu.view()), r.got)) << "second launch differs";
  return r;
}

void check_against_cpu(const Outcome& r) {
  EXPECT_TRUE(within(r.got, r.ref, kBf16Budget));
  for (size_t i = 0; i < r.ref.size(); ++i) {
    ASSERT_EQ(r.got[i] == -kInf, r.ref[i] == -kInf) << "mask differs at " << i << ": got " << r.got[i] << ", want "
                                                    << r.ref[i];
    ASSERT_FALSE(std::isnan(r.got[i])) << "NaN at " << i;
  }
}

TEST_F(CudaIndexerMma, MatchesCpu) {
  uint32_t seed = 11000;
  for (int64_t T : {1, 5, 64, 300, 301}) {
    for (int64_t N : {64, 200, 2048}) {
      for (Pos kind : {Pos::kFromZero, Pos::kEndingPastN, Pos::kRandom}) {
        const DType w_dtype = (seed / 10) % 2 ? DType::kBF16 : DType::kF32;
        SCOPED_TRACE(str_cat("T ", T, " N ", N, " positions ", static_cast<int>(kind), " weights ",
                             dtype_label(w_dtype)));
        check_against_cpu(run_case(*cpu, *cuda, T, N, 4, kind, w_dtype, seed += 10));
      }
    }
  }
}

TEST_F(CudaIndexerMma, OtherRatesAndBothWeightDtypes) {
  uint32_t seed = 12000;
  for (int64_t rate : {1, 128}) {
    for (DType w_dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(str_cat("rate ", rate, " weights ", dtype_label(w_dtype)));
      check_against_cpu(run_case(*cpu, *cuda, 37, 333, rate, Pos::kRandom, w_dtype, seed += 10));
      check_against_cpu(run_case(*cpu, *cuda, 64, 200, rate, Pos::kEndingPastN, w_dtype, seed += 10));
    }
  }
}

TEST_F(CudaIndexerMma, NanInQPoisonsThatTokensValidScores) {
  const int64_t T = 64, N = 200, bad_t = 37;
  const int64_t nan_at = (bad_t * kHi + 29) * kDi + 77;  // token 37, head 29, dim 77
  const Outcome r = run_case(*cpu, *cuda, T, N, 4, Pos::kEndingPastN, DType::kF32, 13000, nan_at);
  EXPECT_TRUE(within(r.got, r.ref, kBf16Budget));  // NaN where the reference has NaN, nowhere else
  int64_t nans = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t valid = std::clamp<int64_t>((static_cast<int64_t>(r.pos[t]) + 1) / 4, 0, N);
    for (int64_t j = 0; j < N; ++j) {
      const float v = r.got[t * N + j];
      if (j >= valid) {
        ASSERT_EQ(v, -kInf) << "t " << t << " j " << j;
      } else if (t == bad_t) {
        ASSERT_TRUE(std::isnan(v)) << "t " << t << " j " << j << ": " << v;
        ++nans;
      } else {
        ASSERT_TRUE(std::isfinite(v)) << "t " << t << " j " << j << ": " << v;
      }
    }
  }
  EXPECT_GT(nans, 0);
}

// The launcher declines what it does not implement, before touching the device.
TEST(CudaIndexerMmaShapes, UnsupportedReturnsFalse) {
  alignas(16) static uint16_t buf[64];
  const auto* p = reinterpret_cast<const __nv_bfloat16*>(buf);
  float out = 0;
  const int32_t pos = 0;
  using backend::cuda::launch_indexer_scores_mma;
  EXPECT_FALSE(launch_indexer_scores_mma(p, p, buf, true, 1.0f, &pos, 4, 8, 32, 128, 16, &out, nullptr));  // Hi
  EXPECT_FALSE(launch_indexer_scores_mma(p, p, buf, true, 1.0f, &pos, 4, 8, 64, 64, 16, &out, nullptr));   // Di
  EXPECT_FALSE(launch_indexer_scores_mma(p, p, buf, true, 1.0f, &pos, 0, 8, 64, 128, 16, &out, nullptr));  // rate
  EXPECT_FALSE(launch_indexer_scores_mma(p + 1, p, buf, true, 1.0f, &pos, 4, 8, 64, 128, 16, &out, nullptr));
  EXPECT_FALSE(launch_indexer_scores_mma(p, p + 1, buf, true, 1.0f, &pos, 4, 8, 64, 128, 16, &out, nullptr));
  // Nothing to do: handled without a launch.
  EXPECT_TRUE(launch_indexer_scores_mma(p, p, buf, true, 1.0f, &pos, 4, 0, 64, 128, 16, &out, nullptr));
  EXPECT_TRUE(launch_indexer_scores_mma(p, p, buf, true, 1.0f, &pos, 4, 8, 64, 128, 0, &out, nullptr));
}

}  // namespace
}  // namespace clawmine::test
