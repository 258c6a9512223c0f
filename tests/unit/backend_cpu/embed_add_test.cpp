// embed (BF16 table lookup, out-of-range ids) and add.
#include <gtest/gtest.h>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

TEST(CpuEmbed, GathersRowsAsF32) {
  auto be = ops::make_cpu_backend(2);
  const int64_t V = 10, D = 6;
  HostTensor table(DType::kBF16, {V, D});
  const std::vector<float> r = random_normal(V * D, 201);
  for (int64_t i = 0; i < V * D; ++i) table.as<uint16_t>()[i] = f32_to_bf16(r[i]);
  std::vector<int32_t> ids = {3, 0, 9, 3};
  std::vector<float> out(ids.size() * D);
  poison(out);
  be->embed(table.view(), i32_view(ids, {4}), f32_view(out, {4, D}));
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(out[t * D + d], bf16_to_f32(table.as<uint16_t>()[ids[t] * D + d]));
}

TEST(CpuEmbed, OutOfRangeIdNamesIdAndVocab) {
  auto be = ops::make_cpu_backend(1);
  HostTensor table(DType::kF32, {10, 4});
  std::vector<float> out(8);
  for (int32_t bad : {10, -1}) {
    try {
      std::vector<int32_t> ids = {1, bad};
      be->embed(table.view(), i32_view(ids, {2}), f32_view(out, {2, 4}));
      FAIL() << "expected an error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("10"), std::string::npos) << msg;
    }
  }
}

TEST(CpuAdd, Elementwise) {
  auto be = ops::make_cpu_backend(1);
  std::vector<float> a = random_normal(30, 202), b = random_normal(30, 203), out(30);
  poison(out);
  be->add(f32_view(a, {5, 6}), f32_view(b, {5, 6}), f32_view(out, {5, 6}));
  for (int i = 0; i < 30; ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  be->add(f32_view(a, {5, 6}), f32_view(b, {5, 6}), f32_view(a, {5, 6}));  // aliasing a
  EXPECT_TRUE(same_bits(a, out));
}

}  // namespace
}  // namespace clawmine::test
