// The diagnostics over a backend whose device() is not the CPU (the ShadowDevice stand-in: its
// memory faults when the host reads it directly): the trace, the locator, the replay explainer,
// the activation recorder and the doctor read tensors back only through download() and give the
// same answers as on the CPU backend. What a real GPU adds (BF16 activations, asynchronous
// streams) the lead checks on the H100.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "diag/activation_recorder.h"
#include "diag/doctor.h"
#include "diag/host_read.h"
#include "diag/replay.h"
#include "diag/trace.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "unit/diag/diag_fixtures.h"
#include "unit/diag/shadow_device.h"

namespace clawmine::diag {
namespace {

using model::deepseek_v4::Model;

const model::deepseek_v4::LoadOptions kNoAudit{{}, {}, false};
const std::vector<int32_t> kIds = {5, 17, 42, 99, 3, 250, 7, 64, 11, 300, 2, 1};

std::vector<nlohmann::json> read_lines(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(ShadowDevice, RefusesHostViewsInOps) {
  test::ShadowDevice dev;
  std::vector<float> host(4, 1.0f);
  const TensorView h{DType::kF32, Device::kCpu, {4}, host.data()};
  const TensorView d = dev.allocate(DType::kF32, {4});
  EXPECT_EQ(d.device, Device::kCuda);
  EXPECT_THROW(dev.add(h, d, d), Error);
  dev.release(d);
}

TEST(HostRead, DownloadsAndWidensBf16AndF16) {
  test::ShadowDevice dev;
  const std::vector<float> want = {1.5f, -2.25f, 3072.0f, -0.0078125f, 0.0f};
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    std::vector<uint16_t> half(want.size());
    for (size_t i = 0; i < want.size(); ++i) half[i] = t == DType::kBF16 ? f32_to_bf16(want[i]) : f32_to_f16(want[i]);
    ops::DeviceBuffer buf(dev, t, {5});
    dev.upload(t == DType::kF32 ? static_cast<const void*>(want.data()) : half.data(), buf.view());
    const int64_t before = dev.downloads();
    const HostF32 h(dev, buf.view());
    EXPECT_EQ(dev.downloads(), before + 1);
    ASSERT_EQ(h.size(), 5);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(h.data()[i], want[i]) << dtype_name(t) << " " << i;
  }
  ops::DeviceBuffer ids(dev, DType::kI32, {3});
  const std::vector<int32_t> v = {7, -1, 42};
  dev.upload(v.data(), ids.view());
  EXPECT_EQ(host_i32(dev, ids.view()), v);
}

TEST(DeviceTrace, SameTraceAndLogitsAsTheCpuBackend) {
  test::TempDir tmp;
  auto cpu = ops::make_cpu_backend(2);
  test::ShadowDevice dev;  // outlives the model placed on it
  auto cpu_model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  auto dev_model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  dev_model->place(dev);
  Buffer a, b;
  {
    Tracer tracer(*cpu, TraceOptions{(tmp.path() / "cpu.jsonl").string()});
    auto cache = cpu_model->new_cache();
    a = cpu_model->forward(tracer, cache, kIds, {});
  }
  const int64_t before = dev.downloads();
  {
    Tracer tracer(dev, TraceOptions{(tmp.path() / "dev.jsonl").string()});
    EXPECT_EQ(tracer.device(), Device::kCuda);
    auto cache = dev_model->new_cache();
    b = dev_model->forward(tracer, cache, kIds, {});
    EXPECT_FALSE(tracer.first_non_finite());
  }
  ASSERT_EQ(a.view().numel(), b.view().numel());
  EXPECT_EQ(0, std::memcmp(a.f32(), b.f32(), a.view().nbytes()));
  const auto la = read_lines(tmp.path() / "cpu.jsonl"), lb = read_lines(tmp.path() / "dev.jsonl");
  ASSERT_GT(la.size(), 100u);
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) ASSERT_EQ(la[i], lb[i]) << "line " << i;
  EXPECT_GT(dev.downloads() - before, static_cast<int64_t>(la.size()) / 2) << "stats must come back through download()";
}

TEST(DeviceTrace, LocatorNamesTheSeedProjectionOnTheDevice) {
  test::ShadowDevice dev;
  auto model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  model->place(dev);
  dev.set_linear_policy({ops::Nvfp4Path::kW4A4, ops::Fp8Path::kW8A16, ops::ActScale::kStatic, false});
  Tracer tracer(dev);
  auto cache = model->new_cache();
  try {
    model->forward(tracer, cache, kIds, {});
  } catch (const Error&) {
  }
  ASSERT_TRUE(tracer.first_non_finite());
  const NonFiniteFinding& f = *tracer.first_non_finite();
  EXPECT_EQ(f.op_name, "layers.0.attn.fused_wqa_wkv") << f.message;
  EXPECT_NE(f.message.find("W4A4 static, input_scale"), std::string::npos) << f.message;
  EXPECT_NE(f.message.find("> 448"), std::string::npos) << f.message;
}

struct NanEmbedding {
  test::TempDir dir;
  std::unique_ptr<Model> model;
  NanEmbedding() {
    test::copy_model("tiny-a", dir.path());
    const int64_t D = Model::load(dir.path())->config().hidden_size;
    test::patch_tensor(dir.path(), "embed.weight", 42 * D + 3, 1, std::numeric_limits<float>::quiet_NaN());
    model = Model::load(dir.path());
  }
};

TEST(DeviceTrace, NanEmbeddingRowNamesTheTokenId) {
  test::ShadowDevice dev;
  NanEmbedding m;
  m.model->place(dev);
  Tracer tracer(dev);
  auto cache = m.model->new_cache();
  try {
    m.model->forward(tracer, cache, kIds, {});
  } catch (const Error&) {
  }
  ASSERT_TRUE(tracer.first_non_finite());
  EXPECT_EQ(tracer.first_non_finite()->op_name, "embed");
  EXPECT_NE(tracer.first_non_finite()->message.find("token id 42"), std::string::npos)
      << tracer.first_non_finite()->message;
}

// The explanation decodes the expert weights on the host: placed ones are downloaded first.
TEST(DeviceTrace, NanExpertWeightIsNamed) {
  test::ShadowDevice dev;
  auto cpu = ops::make_cpu_backend(2);
  test::TempDir dir;
  test::copy_model("tiny-a", dir.path());
  test::patch_tensor(dir.path(), "layers.0.ffn.shared_experts.w2.weight", 5 * 16 + 3, 1,
                     std::numeric_limits<float>::quiet_NaN());
  std::string messages[2];
  for (int i = 0; i < 2; ++i) {
    auto model = Model::load(dir.path());
    if (i == 1) model->place(dev);
    Tracer tracer(i == 1 ? static_cast<ops::Backend&>(dev) : *cpu);
    auto cache = model->new_cache();
    try {
      model->forward(tracer, cache, kIds, {});
    } catch (const Error&) {
    }
    ASSERT_TRUE(tracer.first_non_finite());
    EXPECT_EQ(tracer.first_non_finite()->op_name, "layers.0.ffn.shared_experts");
    messages[i] = tracer.first_non_finite()->message;
  }
  EXPECT_NE(messages[1].find("weight layers.0.ffn.shared_experts.w2 holds NaN/Inf"), std::string::npos) << messages[1];
  EXPECT_EQ(messages[0], messages[1]);
}

TEST(DeviceReplay, ExplainsOnTheServingBackendAndRestoresItsPolicy) {
  test::ShadowDevice dev;
  NanEmbedding m;
  m.model->place(dev);
  ops::LinearPolicy serving;
  serving.act_scale = ops::ActScale::kDynamic;
  dev.set_linear_policy(serving);
  const auto explain = make_replay_explainer(*m.model, dev, {}, {});
  const std::string why = explain({5, 17}, {42});
  EXPECT_NE(why.find("first non-finite op: embed"), std::string::npos) << why;
  EXPECT_NE(why.find("token id 42"), std::string::npos) << why;
  EXPECT_EQ(dev.linear_policy().act_scale, ops::ActScale::kDynamic);
  EXPECT_EQ(explain({5, 17}, {3}), "");
}

TEST(DeviceRecorder, SameStatisticsAsTheCpuBackend) {
  auto cpu = ops::make_cpu_backend(2);
  test::ShadowDevice dev;
  auto cpu_model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  auto dev_model = Model::load(test::fixture_dir("models/tiny-b-seed"), kNoAudit);
  dev_model->place(dev);
  ActivationRecorder rc(*cpu), rd(dev);
  {
    auto c1 = cpu_model->new_cache(), c2 = dev_model->new_cache();
    cpu_model->forward(rc, c1, kIds, {});
    dev_model->forward(rd, c2, kIds, {});
  }
  ASSERT_GT(rc.stats().size(), 10u);
  ASSERT_EQ(rc.stats().size(), rd.stats().size());
  for (size_t i = 0; i < rc.stats().size(); ++i) {
    const LinearActivationStats &a = rc.stats()[i], &b = rd.stats()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.rows, b.rows) << a.name;
    EXPECT_EQ(a.amax, b.amax) << a.name;
    EXPECT_EQ(a.input_scale, b.input_scale) << a.name;
    EXPECT_EQ(a.saturating_blocks16, b.saturating_blocks16) << a.name;
  }
}

TEST(DeviceDoctor, SameFindingsAsTheCpuBackend) {
  DoctorOptions o;
  o.model_dir = test::fixture_dir("models/tiny-b-seed").string();
  o.threads = 2;
  o.act_scale = ops::ActScale::kStatic;
  o.calib = {kIds, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}};
  const DoctorReport a = run_doctor(o);
  test::ShadowDevice dev;
  const DoctorReport b = run_doctor(o, dev);
  EXPECT_EQ(dev.linear_policy().nvfp4, ops::Nvfp4Path::kW4A16) << "the doctor leaves the backend's policy as it was";
  ASSERT_EQ(a.findings.size(), b.findings.size());
  for (size_t i = 0; i < a.findings.size(); ++i) {
    EXPECT_EQ(a.findings[i].subject, b.findings[i].subject);
    EXPECT_EQ(a.findings[i].problem, b.findings[i].problem);
  }
  ASSERT_EQ(a.local.size(), b.local.size());
  ASSERT_GT(a.local.size(), 0u);
  for (size_t i = 0; i < a.local.size(); ++i) {
    EXPECT_EQ(a.local[i].name, b.local[i].name);
    EXPECT_EQ(a.local[i].cosine, b.local[i].cosine) << a.local[i].name;
  }
  ASSERT_EQ(a.global.size(), b.global.size());
  for (size_t i = 0; i < a.global.size(); ++i) EXPECT_EQ(a.global[i].cosine, b.global[i].cosine);
  ASSERT_TRUE(a.logits && b.logits);
  EXPECT_EQ(a.logits->median_cosine, b.logits->median_cosine);
}

}  // namespace
}  // namespace clawmine::diag
