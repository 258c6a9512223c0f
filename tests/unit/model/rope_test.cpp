// RoPE tables: the YaRN numbers of spec §3.0 for V4 (base 160000, 64 rope dims, factor 16,
// original 65536: pairs 0..15 unchanged, 25..31 divided by 16), and bit equality with the
// inv_freq buffers transformers built for the golden fixtures.
#include "model/deepseek_v4/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace clawmine::model::deepseek_v4 {
namespace {

TEST(Rope, YarnMatchesSpecRampForV4) {
  RopeScaling s{true, 16.0, 65536, 32.0, 1.0};
  const auto plain = rope_inv_freq_default(160000.0, 64);
  const auto yarn = rope_inv_freq_yarn(160000.0, 64, s);
  ASSERT_EQ(yarn.size(), 32u);
  for (int i = 0; i <= 15; ++i) EXPECT_FLOAT_EQ(yarn[i], plain[i]) << i;  // low = floor(15.45) = 15
  for (int i = 25; i < 32; ++i) EXPECT_FLOAT_EQ(yarn[i], plain[i] / 16.0f) << i;  // high = ceil(24.71) = 25
  for (int i = 16; i < 25; ++i) {
    EXPECT_LT(yarn[i], plain[i]) << i;
    EXPECT_GT(yarn[i], plain[i] / 16.0f) << i;
  }
  // ramp at i = 20 is (20 - 15) / 10 = 0.5: half interpolated, half extrapolated.
  EXPECT_NEAR(yarn[20], plain[20] / 16.0f * 0.5f + plain[20] * 0.5f, 1e-6f * plain[20]);
}

TEST(Rope, PlainTableIsBasePowers) {
  const auto inv = rope_inv_freq_default(10000.0, 64);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(inv[i], std::pow(10000.0, -2.0 * i / 64), 1e-6 * std::pow(10000.0, -2.0 * i / 64));
}

std::vector<float> hex_floats(const nlohmann::json& j) {
  std::vector<float> v;
  for (const auto& h : j.at("hex")) v.push_back(static_cast<float>(std::strtod(h.get<std::string>().c_str(), nullptr)));
  return v;
}

TEST(Rope, TablesEqualTransformersBuffersBitForBit) {
  for (const char* name : {"tiny-a", "tiny-b", "tiny-c"}) {
    std::ifstream f(test::fixture_dir(std::string("golden/") + name + "/inv_freq.json"));
    ASSERT_TRUE(f) << name;
    const auto j = nlohmann::json::parse(f);
    const ModelConfig cfg = load_model_config(test::fixture_dir(std::string("models/") + name));
    EXPECT_EQ(rope_inv_freq(cfg, AttentionKind::kSliding), hex_floats(j.at("main"))) << name;
    EXPECT_EQ(rope_inv_freq(cfg, AttentionKind::kCompressedSparse), hex_floats(j.at("compress"))) << name;
  }
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
