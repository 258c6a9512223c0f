// The numerics trace: every op named and measured, outputs unchanged by tracing, JSON lines, and
// the first-non-finite locator on the seed fixture (W4A4 static, non-saturating) and on a NaN
// embedding row.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "diag/trace.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "unit/diag/diag_fixtures.h"

namespace clawmine::diag {
namespace {

using model::deepseek_v4::Model;

// The load audit is the loader's business (and would change trust flags); these tests trace raw paths.
const model::deepseek_v4::LoadOptions kNoAudit{{}, {}, false};
const std::vector<int32_t> kIds = {5, 17, 42, 99, 3, 250, 7, 64, 11, 300, 2, 1};

TEST(Trace, NamesEveryOpAndLeavesLogitsBitIdentical) {
  auto model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  auto cpu = ops::make_cpu_backend(2);
  auto cache = model->new_cache();
  const Buffer plain = model->forward(*cpu, cache, kIds, {});
  test::TempDir tmp;
  const auto file = tmp.path() / "trace.jsonl";
  Buffer traced;
  {
    Tracer tracer(*cpu, TraceOptions{file.string()});
    auto c2 = model->new_cache();
    traced = model->forward(tracer, c2, kIds, {});
    EXPECT_FALSE(tracer.first_non_finite());
    EXPECT_NE(tracer.summary().find("layers.3"), std::string::npos);
  }
  ASSERT_EQ(0, std::memcmp(plain.f32(), traced.f32(), plain.view().numel() * sizeof(float)));
  std::ifstream in(file);
  std::set<std::string> names;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    for (const char* k : {"name", "op", "shape", "dtype", "path", "amax", "rms", "mean", "nan", "inf"})
      ASSERT_TRUE(j.contains(k)) << k << " missing in " << line;
    names.insert(j["name"].get<std::string>());
    if (j["name"] == "layers.0.attn.fused_wqa_wkv") EXPECT_EQ(j["path"], "W4A16 (nvfp4)");
    ++n;
  }
  EXPECT_GT(n, 100);
  for (const char* want : {"embed", "layers.0.attn.fused_wqa_wkv", "layers.0.attn.wq_b", "layers.1.attn.compressor.compress_chunk",
                           "layers.1.attn.indexer.indexer_scores", "layers.3.ffn.experts", "layers.3.ffn.shared_experts",
                           "layers.0.hc_attn.hc_pre", "head"})
    EXPECT_TRUE(names.count(want)) << want;
}

TEST(Locator, SeedFixtureNonSaturatingStaticNamesLayer0AttentionProjection) {
  auto model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  auto cpu = ops::make_cpu_backend(2);
  cpu->set_linear_policy({ops::Nvfp4Path::kW4A4, ops::Fp8Path::kW8A16, ops::ActScale::kStatic, false});
  Tracer tracer(*cpu);
  auto cache = model->new_cache();
  try {
    model->forward(tracer, cache, kIds, {});
  } catch (const Error&) {
    // an op downstream may refuse the NaN (top-k); the locator has already recorded the origin
  }
  ASSERT_TRUE(tracer.first_non_finite());
  const NonFiniteFinding& f = *tracer.first_non_finite();
  EXPECT_EQ(f.op_name, "layers.0.attn.fused_wqa_wkv") << f.message;
  EXPECT_TRUE(f.inputs_finite);
  EXPECT_NE(f.message.find("W4A4 static, input_scale"), std::string::npos) << f.message;
  EXPECT_NE(f.message.find("> 448"), std::string::npos) << f.message;
  EXPECT_NE(tracer.summary().find("first non-finite op: layers.0.attn.fused_wqa_wkv"), std::string::npos);
}

TEST(Locator, SaturatingStaticStaysFinite) {
  auto model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  auto cpu = ops::make_cpu_backend(2);
  cpu->set_linear_policy({ops::Nvfp4Path::kW4A4, ops::Fp8Path::kW8A8, ops::ActScale::kStatic, true});
  Tracer tracer(*cpu);
  auto cache = model->new_cache();
  model->forward(tracer, cache, kIds, {});
  EXPECT_FALSE(tracer.first_non_finite());
}

TEST(Locator, NanEmbeddingRowNamesEmbedAndTokenId) {
  test::TempDir dir;
  test::copy_model("tiny-a", dir.path());
  auto clean = Model::load(dir.path());
  const int64_t D = clean->config().hidden_size;
  clean.reset();
  test::patch_tensor(dir.path(), "embed.weight", 42 * D + 3, 1, std::numeric_limits<float>::quiet_NaN());
  auto model = Model::load(dir.path());
  auto cpu = ops::make_cpu_backend(2);
  Tracer tracer(*cpu);
  auto cache = model->new_cache();
  try {
    model->forward(tracer, cache, kIds, {});
  } catch (const Error&) {
  }
  ASSERT_TRUE(tracer.first_non_finite());
  EXPECT_EQ(tracer.first_non_finite()->op_name, "embed");
  EXPECT_NE(tracer.first_non_finite()->message.find("token id 42"), std::string::npos)
      << tracer.first_non_finite()->message;
}

}  // namespace
}  // namespace clawmine::diag
