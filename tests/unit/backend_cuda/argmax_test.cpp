// The CUDA argmax_rows (argmax.cu) against the CPU reference on the same fresh random rows, the
// output poisoned first: exactly equal ids for rows of 1..4 values, odd and 16-byte-unaligned
// rows (the scalar path), the vocabulary of V4 (129280, the vector path) and one more, 1..32
// rows, with planted exact ties (first index wins), -0 vs +0, and NaN / +-Inf at the start,
// middle and end of a row (-1 - the first such index). Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "unit/backend_cuda/cuda_test_util.h"

namespace clawmine::test {
namespace {

class CudaArgmax : public GpuTest {};

constexpr float kInf = std::numeric_limits<float>::infinity();

// R rows of N: normal values; row r % 4 == 1 gets its maximum copied to a later index (a tie),
// r % 4 == 2 a NaN / +Inf / -Inf at a position depending on r, r % 4 == 3 a signed-zero tie at
// the top (every value negative but a -0 and a later +0).
std::vector<float> rows_with_cases(int64_t R, int64_t N, uint32_t seed) {
  std::vector<float> v = random_normal(R * N, seed);
  std::mt19937 rng(seed + 1);
  for (int64_t r = 0; r < R; ++r) {
    float* row = v.data() + r * N;
    std::uniform_int_distribution<int64_t> at(0, N - 1);
    switch (r % 4) {
      case 1: {
        int64_t m = 0;
        for (int64_t j = 1; j < N; ++j)
          if (row[j] > row[m]) m = j;
        row[std::max(m, at(rng))] = row[m];
        break;
      }
      case 2: {
        const float bad[] = {std::nanf(""), kInf, -kInf};
        const int64_t pos[] = {0, N / 2, N - 1};
        row[pos[(r / 4) % 3]] = bad[(r / 4 + r / 12) % 3];
        break;
      }
      case 3:
        if (N >= 2) {
          for (int64_t j = 0; j < N; ++j) row[j] = -std::fabs(row[j]) - 1.0f;
          const int64_t a = at(rng), b = at(rng);
          row[std::min(a, b)] = -0.0f;
          row[std::max(a, b)] = 0.0f;
        }
        break;
      default:
        break;
    }
  }
  return v;
}

void expect_same(ops::Backend& cpu, ops::Backend& cuda, int64_t R, int64_t N, int64_t offset, uint32_t seed) {
  SCOPED_TRACE(str_cat("R ", R, ", N ", N, ", offset ", offset));
  const std::vector<float> v = rows_with_cases(R, N, seed);
  std::vector<int32_t> ref(static_cast<size_t>(R), 77);
  cpu.argmax_rows(TensorView{DType::kF32, Device::kCpu, {R, N}, const_cast<float*>(v.data())},
                  TensorView{DType::kI32, Device::kCpu, {R}, ref.data()});
  // offset floats in front: a row start that is not 16-byte aligned takes the scalar path.
  std::vector<float> padded(static_cast<size_t>(offset), 1.0f);
  padded.insert(padded.end(), v.begin(), v.end());
  const ops::DeviceBuffer d = upload_f32(cuda, padded, {static_cast<int64_t>(padded.size())});
  TensorView values = d.view();
  values.shape = {R, N};
  values.data = d.view().f32() + offset;
  const ops::DeviceBuffer out = poisoned(cuda, DType::kI32, {R});
  cuda.argmax_rows(values, out.view());
  const std::vector<int32_t> got = download_as<int32_t>(cuda, out.view());
  EXPECT_EQ(got, ref);
  for (int64_t r = 0; r < R; ++r)  // the reference itself: first maximum, or -1 - first non-finite
    if (r % 4 == 2) EXPECT_LT(ref[static_cast<size_t>(r)], 0) << "row " << r;
}

TEST_F(CudaArgmax, EqualsTheCpuOnVocabularyRows) {
  expect_same(*cpu, *cuda, 1, 129280, 0, 11);
  expect_same(*cpu, *cuda, 32, 129280, 0, 12);
  expect_same(*cpu, *cuda, 12, 129281, 0, 13);
  expect_same(*cpu, *cuda, 12, 129280, 1, 14);
}

TEST_F(CudaArgmax, EqualsTheCpuOnShortAndOddRows) {
  uint32_t seed = 100;
  for (int64_t N : {1, 2, 3, 4, 5, 31, 1024, 4097, 40000})
    for (int64_t R : {1, 4, 9}) expect_same(*cpu, *cuda, R, N, static_cast<int64_t>(seed % 3), seed++);
}

TEST_F(CudaArgmax, RejectsBadShapes) {
  const ops::DeviceBuffer v = upload_f32(*cuda, std::vector<float>(6, 1.0f), {2, 3});
  const ops::DeviceBuffer out = poisoned(*cuda, DType::kI32, {3});
  EXPECT_THROW(cuda->argmax_rows(v.view(), out.view()), Error);
  TensorView flat = v.view();
  flat.shape = {6};
  EXPECT_THROW(cuda->argmax_rows(flat, out.view()), Error);
}

}  // namespace
}  // namespace clawmine::test
