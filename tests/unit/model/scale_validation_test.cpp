// Load-time scale validation: every bad scale (NaN, Inf, 0, negative, wrong shape, missing) in
// every layout is a load error naming the tensor and its file (table-driven); problems are
// collected into one error; an invalid input_scale is an error only under W4A4 + static and
// otherwise a warning that marks the weight untrusted; fused per-shard scales report the shard.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>

#include "core/error.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "support/tiny_checkpoint.h"

namespace clawmine::model::deepseek_v4 {
namespace {

using test::TinyCheckpointOptions;
using test::TinyQuant;
using test::TinyTensor;


using Mutation = std::function<void(std::vector<TinyTensor>&)>;

TinyTensor& find(std::vector<TinyTensor>& t, const std::string& name) {
  for (TinyTensor& x : t)
    if (x.name == name) return x;
  throw Error("test: no tensor " + name);
}

Mutation set_f32(const std::string& name, size_t index, float v) {
  return [=](std::vector<TinyTensor>& t) { std::memcpy(&find(t, name).bytes.at(index * 4), &v, 4); };
}
Mutation set_byte(const std::string& name, size_t index, uint8_t v) {
  return [=](std::vector<TinyTensor>& t) { find(t, name).bytes.at(index) = v; };
}
Mutation remove(const std::string& name) {
  return [=](std::vector<TinyTensor>& t) {
    std::erase_if(t, [&](const TinyTensor& x) { return x.name == name; });
  };
}
Mutation reshape_scalar(const std::string& name, int64_t n) {
  return [=](std::vector<TinyTensor>& t) {
    TinyTensor& x = find(t, name);
    x.shape = {n};
    x.bytes.resize(static_cast<size_t>(n) * 4, 0x3c);
  };
}

struct Written {
  test::TempDir dir;
};

std::unique_ptr<Written> write(const ModelConfig& cfg, const TinyCheckpointOptions& opts, const Mutation& mutate) {
  auto w = std::make_unique<Written>();
  std::vector<TinyTensor> t = test::tiny_tensors(cfg, opts);
  if (mutate) mutate(t);
  test::write_tiny_tensors(w->dir.path() / "model.safetensors", t);
  std::ofstream f(w->dir.path() / "config.json");
  f << test::tiny_config_json(cfg, opts.quant);
  return w;
}

std::string load_error(const std::filesystem::path& dir, const LoadOptions& lo = {}) {
  try {
    Model::load(dir, lo);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

LoadOptions w4a4(ops::ActScale a) {
  LoadOptions lo;
  lo.policy.nvfp4 = ops::Nvfp4Path::kW4A4;
  lo.policy.act_scale = a;
  return lo;
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

struct BadScaleCase {
  const char* label;
  TinyQuant quant;
  Mutation mutate;
  std::string tensor;    // named in the error
  std::string detail;    // also in the error
  bool missing = false;  // the error names the directory instead of the file
};

TEST(ScaleValidation, EveryBadScaleIsALoadErrorNamingTensorAndFile) {
  const std::string wq_a = "layers.0.attn.wq_a", wo_a = "layers.0.attn.wo_a", ex = "layers.2.ffn.experts.1.w2";
  const std::vector<BadScaleCase> cases = {
      {"nvfp4 block scale NaN", TinyQuant::kSeed, set_byte(wq_a + ".weight_scale", 5, 0x7f), wq_a + ".weight_scale",
       "element [2, 1] = NaN"},
      {"nvfp4 block scale NaN 0xff", TinyQuant::kSeed, set_byte(ex + ".weight_scale", 0, 0xff), ex + ".weight_scale",
       "NaN"},
      {"nvfp4 block scale zero", TinyQuant::kSeed,
       [&](std::vector<TinyTensor>& t) {
         find(t, wq_a + ".weight_scale").bytes[2] = 0;
         find(t, wq_a + ".weight").bytes[16] = 0x11;  // block [1, 0] holds non-zero codes
       },
       wq_a + ".weight_scale", "element [1, 0] = 0"},
      {"nvfp4 block scale negative", TinyQuant::kSeed, set_byte(wq_a + ".weight_scale", 3, 0xb8),
       wq_a + ".weight_scale", "= -1"},
      {"weight_scale_2 NaN", TinyQuant::kSeed, set_f32(ex + ".weight_scale_2", 0, kNaN), ex + ".weight_scale_2",
       "value = NaN"},
      {"weight_scale_2 Inf", TinyQuant::kSeed, set_f32(wq_a + ".weight_scale_2", 0, kInf), wq_a + ".weight_scale_2",
       "+Inf"},
      {"weight_scale_2 zero", TinyQuant::kSeed, set_f32(wq_a + ".weight_scale_2", 0, 0.0f), wq_a + ".weight_scale_2",
       "value = 0"},
      {"weight_scale_2 negative", TinyQuant::kSeed, set_f32(wq_a + ".weight_scale_2", 0, -0.01f),
       wq_a + ".weight_scale_2", "value = -0.01"},
      {"weight_scale_2 wrong shape", TinyQuant::kSeed, reshape_scalar(wq_a + ".weight_scale_2", 3),
       wq_a + ".weight_scale_2", "found F32 [3]"},
      {"weight_scale_2 missing", TinyQuant::kSeed, remove(wq_a + ".weight_scale_2"), wq_a + ".weight_scale_2",
       "found nothing", true},
      {"nvfp4 block scale missing", TinyQuant::kSeed, remove(wq_a + ".weight_scale"), wq_a + ".weight_scale",
       "found nothing", true},
      {"fp8 F32 block scale NaN", TinyQuant::kSeed, set_f32(wo_a + ".weight_scale_inv", 0, kNaN),
       wo_a + ".weight_scale_inv", "element [0, 0] = NaN"},
      {"fp8 F32 block scale Inf", TinyQuant::kSeed, set_f32(wo_a + ".weight_scale_inv", 0, -kInf),
       wo_a + ".weight_scale_inv", "-Inf"},
      {"fp8 F32 block scale zero", TinyQuant::kSeed, set_f32(wo_a + ".weight_scale_inv", 0, 0.0f),
       wo_a + ".weight_scale_inv", "= 0"},
      {"fp8 F32 block scale negative", TinyQuant::kSeed, set_f32(wo_a + ".weight_scale_inv", 0, -2.0f),
       wo_a + ".weight_scale_inv", "= -2"},
      {"fp8 F32 block scale missing", TinyQuant::kSeed, remove(wo_a + ".weight_scale_inv"), wo_a + ".scale",
       "found nothing", true},
      {"release E8M0 block scale NaN", TinyQuant::kFp8Mxfp4, set_byte(wq_a + ".scale", 0, 0xff), wq_a + ".scale",
       "NaN (E8M0 code 0xff)"},
      {"release E8M0 block scale wrong shape", TinyQuant::kFp8Mxfp4,
       [&](std::vector<TinyTensor>& t) {
         TinyTensor& s = find(t, wq_a + ".scale");
         s.shape = {2, 1};
         s.bytes.push_back(127);
       },
       wq_a + ".scale", "found F8_E8M0 [2, 1]"},
      {"mxfp4 expert scale NaN", TinyQuant::kFp8Mxfp4, set_byte(ex + ".scale", 7, 0xff), ex + ".scale",
       "element [7, 0] = NaN"},
      {"mxfp4 expert scale missing", TinyQuant::kFp8Mxfp4, remove(ex + ".scale"), ex + ".scale", "found nothing",
       true},
  };
  for (const BadScaleCase& c : cases) {
    SCOPED_TRACE(c.label);
    const ModelConfig cfg = c.quant == TinyQuant::kSeed ? test::tiny_nvfp4_attention_config() : test::tiny_model_config();
    auto w = write(cfg, {.quant = c.quant}, c.mutate);
    const std::string err = load_error(w->dir.path());
    ASSERT_FALSE(err.empty()) << "loaded without an error";
    EXPECT_NE(err.find(c.tensor), std::string::npos) << err;
    EXPECT_NE(err.find(c.detail), std::string::npos) << err;
    const std::string where = c.missing ? w->dir.path().string() : (w->dir.path() / "model.safetensors").string();
    EXPECT_NE(err.find(where), std::string::npos) << err;
  }
}

TEST(ScaleValidation, ProblemsAreCollectedIntoOneError) {
  auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed}, [](std::vector<TinyTensor>& t) {
    set_f32("layers.1.attn.wq_b.weight_scale_2", 0, kNaN)(t);
    set_f32("layers.3.ffn.experts.0.w1.weight_scale_2", 0, 0.0f)(t);
    for (size_t i = 0; i < 10; ++i) set_byte("layers.2.attn.wo_b.weight_scale", i, 0x7f)(t);
  });
  const std::string err = load_error(w->dir.path());
  EXPECT_NE(err.find("3 invalid scale tensor(s)"), std::string::npos) << err;
  EXPECT_NE(err.find("layers.1.attn.wq_b.weight_scale_2"), std::string::npos) << err;
  EXPECT_NE(err.find("layers.3.ffn.experts.0.w1.weight_scale_2"), std::string::npos) << err;
  EXPECT_NE(err.find("and 6 more bad element(s)"), std::string::npos) << err;
}

TEST(ScaleValidation, ZeroBlockScaleOfAnAllZeroWeightBlockIsAccepted) {
  auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed}, [](std::vector<TinyTensor>& t) {
    find(t, "layers.0.attn.wq_a.weight_scale").bytes[1] = 0;
    for (size_t i = 8; i < 16; ++i) find(t, "layers.0.attn.wq_a.weight").bytes[i] = 0x88;  // -0, -0
  });
  EXPECT_EQ(load_error(w->dir.path()), "");
}

TEST(ScaleValidation, BadInputScaleIsAnErrorOnlyUnderW4A4Static) {
  const std::string name = "layers.0.attn.wq_b.input_scale";
  for (float bad : {kNaN, kInf, 0.0f, -0.002f}) {
    SCOPED_TRACE(bad);
    auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed}, set_f32(name, 0, bad));
    const std::string err = load_error(w->dir.path(), w4a4(ops::ActScale::kStatic));
    EXPECT_NE(err.find(name), std::string::npos) << err;
    EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
    EXPECT_NE(err.find("static activation scale"), std::string::npos) << err;

    const std::vector<std::pair<LoadOptions, std::string>> lenient = {
        {LoadOptions{}, "not used by the chosen policy (--nvfp4-path w4a16"},
        {w4a4(ops::ActScale::kDynamic), "not used by the chosen policy (--nvfp4-path w4a4 --act-scale dynamic)"},
        {w4a4(ops::ActScale::kAuto), "marked untrusted"}};
    for (const auto& [lo, note] : lenient) {
      testing::internal::CaptureStderr();
      std::unique_ptr<Model> m;
      EXPECT_NO_THROW(m = Model::load(w->dir.path(), lo));
      const std::string log = testing::internal::GetCapturedStderr();
      ASSERT_TRUE(m);
      EXPECT_NE(log.find(name), std::string::npos) << log;
      EXPECT_NE(log.find(note), std::string::npos) << log;
      const AttentionWeights& a = m->weights().layers[0].attn;
      EXPECT_FALSE(a.wq_b.input_scale_trusted);
      EXPECT_TRUE(a.wq_a.input_scale_trusted);
    }
  }
}

TEST(ScaleValidation, MissingInputScaleIsAnErrorOnlyUnderW4A4Static) {
  auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kW4A16}, nullptr);
  const std::string err = load_error(w->dir.path(), w4a4(ops::ActScale::kStatic));
  EXPECT_NE(err.find("layers.0.attn.wq_a.input_scale [not in"), std::string::npos) << err;
  std::unique_ptr<Model> m = Model::load(w->dir.path(), w4a4(ops::ActScale::kAuto));
  EXPECT_FALSE(m->weights().layers[2].ffn.experts[0].w1.input_scale_trusted);
}

TEST(ScaleValidation, FusedPerShardScaleNamesTheShard) {
  const std::string fused = "layers.0.attn.fused_wqa_wkv";
  auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed, .fused_wqa_wkv = true, .per_shard_scales = true},
                 set_f32(fused + ".weight_scale_2", 1, kNaN));
  const std::string err = load_error(w->dir.path());
  EXPECT_NE(err.find(fused + ".weight_scale_2 [" + (w->dir.path() / "model.safetensors").string() +
                     "]: element [1] (shard layers.0.attn.wkv) = NaN"),
            std::string::npos)
      << err;
}

TEST(ScaleValidation, FusedPerShardArrayOfWrongLengthIsAnError) {
  const std::string fused = "layers.0.attn.fused_wqa_wkv";
  auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed, .fused_wqa_wkv = true, .per_shard_scales = true},
                 reshape_scalar(fused + ".input_scale", 3));
  const std::string err = load_error(w->dir.path());
  EXPECT_NE(err.find(fused + ".input_scale"), std::string::npos) << err;
  EXPECT_NE(err.find("[2]"), std::string::npos) << err;
}

TEST(ScaleValidation, SharedFusedScalarIsReportedOnce) {
  const std::string fused = "layers.0.attn.fused_wqa_wkv";
  auto w = write(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed, .fused_wqa_wkv = true},
                 set_f32(fused + ".weight_scale_2", 0, 0.0f));
  const std::string err = load_error(w->dir.path());
  EXPECT_NE(err.find("1 invalid scale tensor(s)"), std::string::npos) << err;
  EXPECT_EQ(err.find("shard"), std::string::npos) << err;
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
