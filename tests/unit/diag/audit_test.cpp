// The load audit on a tiny model: NVFP4 routed experts given static input_scales, some far too
// small (layer 2's w1/w3) and some generous (everything else). The audit names and distrusts
// exactly the overflowing ones, stays cheap, and then W4A4 auto is finite, static saturating is
// finite, and static non-saturating turns the logits NaN (the seed failure).
#include "diag/audit.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "core/error.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "support/tiny_checkpoint.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::diag {
namespace {

using namespace model::deepseek_v4;

class LoadAudit : public ::testing::Test {
 protected:
  void SetUp() override {
    test::write_tiny_checkpoint(dir_.path(), test::tiny_model_config(), {.quant = test::TinyQuant::kFp8Nvfp4});
    LoadOptions lo;
    lo.audit = false;
    model_ = Model::load(dir_.path(), lo);
    tiny_ = test::HostTensor(DType::kF32, {});
    tiny_.as<float>()[0] = 1e-5f;  // calibrated amax 0.027: far below any real input
    generous_ = test::HostTensor(DType::kF32, {});
    generous_.as<float>()[0] = 1.0f;  // amax 2688
    for (size_t l = 0; l < model_->mutable_weights().layers.size(); ++l)
      for (ExpertWeights& e : model_->mutable_weights().layers[l].ffn.experts) {
        ASSERT_EQ(e.w1.format, WeightFormat::kNvfp4);
        e.w1.input_scale = (l == 2 ? tiny_ : generous_).view();
        e.w3.input_scale = (l == 2 ? tiny_ : generous_).view();
        e.w2.input_scale = generous_.view();
      }
  }

  std::vector<float> logits(const ops::LinearPolicy& p) {
    auto be = ops::make_cpu_backend(2);
    be->set_linear_policy(p);
    SequenceCache cache = model_->new_cache();
    Buffer out = model_->forward(*be, cache, {1, 5, 9, 60, 3, 37}, ForwardOptions{});
    const float* f = out.f32();
    return std::vector<float>(f, f + out.view().numel());
  }

  test::TempDir dir_;
  std::unique_ptr<Model> model_;
  test::HostTensor tiny_, generous_;
};

TEST_F(LoadAudit, NamesAndDistrustsOverflowingScales) {
  const auto t0 = std::chrono::steady_clock::now();
  const ScaleAudit audit = run_load_audit(*model_, LoadOptions{});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 3.0) << "the audit must stay cheap";
  ASSERT_TRUE(audit.ran);
  int overflowing_layer2 = 0, judged_other = 0;
  for (const ScaleAuditEntry& e : audit.entries) {
    const bool bad = e.name.rfind("layers.2.", 0) == 0 && (e.name.ends_with(".w1") || e.name.ends_with(".w3"));
    EXPECT_EQ(e.overflows, bad) << e.name << " ratio " << e.ratio;
    EXPECT_GT(e.rows, 0);
    if (bad) {
      ++overflowing_layer2;
      EXPECT_GT(e.ratio, 10.0) << e.name;
      EXPECT_GT(e.saturating_fraction, 0.5) << e.name;
    } else {
      ++judged_other;
      EXPECT_LT(e.ratio, 0.1) << e.name;
    }
  }
  EXPECT_GT(overflowing_layer2, 0);
  EXPECT_GT(judged_other, 0);
  EXPECT_EQ(audit.overflowing(), overflowing_layer2);
  for (size_t l = 0; l < model_->weights().layers.size(); ++l)
    for (const ExpertWeights& e : model_->weights().layers[l].ffn.experts) {
      const bool reached = std::any_of(audit.entries.begin(), audit.entries.end(),
                                       [&](const ScaleAuditEntry& a) { return a.name == e.w1.name; });
      EXPECT_EQ(e.w1.input_scale_trusted, !(l == 2 && reached)) << e.w1.name;
      EXPECT_TRUE(e.w2.input_scale_trusted) << e.w2.name;
    }
}

TEST_F(LoadAudit, PoliciesAfterTheAudit) {
  run_load_audit(*model_, LoadOptions{});
  ops::LinearPolicy p;
  p.nvfp4 = ops::Nvfp4Path::kW4A4;
  auto finite = [](const std::vector<float>& v) { return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); }); };
  p.act_scale = ops::ActScale::kAuto;
  EXPECT_TRUE(finite(logits(p)));
  p.act_scale = ops::ActScale::kStatic;
  EXPECT_TRUE(finite(logits(p)));
  // The non-saturating cast reproduces the seed: NaN logits, or a downstream op (the CPU top-k)
  // refusing the NaN that reaches it.
  p.saturate = false;
  try {
    const std::vector<float> nan = logits(p);
    EXPECT_TRUE(std::any_of(nan.begin(), nan.end(), [](float x) { return std::isnan(x); }));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
  }
}

TEST(LoadAuditNoop, NoNvfp4InputScaleMeansNoAudit) {
  test::TempDir dir;
  test::write_tiny_checkpoint(dir.path(), test::tiny_model_config(), {.quant = test::TinyQuant::kFp8Mxfp4});
  LoadOptions lo;
  lo.audit = false;
  std::unique_ptr<Model> m = Model::load(dir.path(), lo);
  EXPECT_FALSE(run_load_audit(*m, lo).ran);
}

TEST(CalibrationIds, VariedAndInVocabulary) {
  const auto seqs = builtin_calibration_ids(512);
  ASSERT_EQ(seqs.size(), 3u);
  std::set<int32_t> distinct;
  for (const auto& s : seqs) {
    EXPECT_EQ(s.size(), 48u);
    for (int32_t id : s) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 512);
      distinct.insert(id);
    }
  }
  EXPECT_GT(distinct.size(), 100u);
}

}  // namespace
}  // namespace clawmine::diag
