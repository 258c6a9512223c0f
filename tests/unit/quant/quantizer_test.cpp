// quant::quantizer: the per-scheme module plan, tensors written per format (bit-exact against the
// codec on the same floats), w1/w3 sharing of the NVFP4 global scale, fused wq_a|wkv with per-shard
// scales, input_scale calibration (expert fallback, multiplier and its glob), metadata JSON, and
// the errors for modules a format cannot hold and for bad options.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "quant/quantizer.h"
#include "support/test_support.h"

namespace clawmine::quant {
namespace {

struct Store {
  std::map<std::string, std::vector<float>> w;  // float weights by module
  std::vector<SourceLinear> linears;

  void add(const std::string& name, int64_t out, int64_t in, uint32_t seed) {
    w[name] = test::random_normal(static_cast<size_t>(out * in), seed, 0.1f);
    SourceLinear l;
    l.name = name;
    l.out_features = out;
    l.in_features = in;
    const std::vector<float>* data = &w[name];
    l.decode_row = [data, in](int64_t r, float* o) { std::memcpy(o, data->data() + r * in, in * sizeof(float)); };
    linears.push_back(std::move(l));
  }
};

// One layer: attention 64-wide, two routed experts with inter 16, a shared expert, a compressor.
Store one_layer() {
  Store s;
  s.add("layers.0.attn.wq_a", 32, 64, 1);
  s.add("layers.0.attn.wq_b", 64, 32, 2);
  s.add("layers.0.attn.wkv", 16, 64, 3);
  s.add("layers.0.attn.wo_a", 32, 64, 4);
  s.add("layers.0.attn.wo_b", 64, 32, 5);
  s.add("layers.0.attn.compressor.wkv", 32, 64, 6);
  s.add("layers.0.attn.indexer.wq_b", 64, 32, 7);
  s.add("layers.0.ffn.gate", 2, 64, 8);
  for (int e = 0; e < 2; ++e) {
    s.add(str_cat("layers.0.ffn.experts.", e, ".w1"), 16, 64, 10 + e);
    s.add(str_cat("layers.0.ffn.experts.", e, ".w2"), 64, 16, 20 + e);
    s.add(str_cat("layers.0.ffn.experts.", e, ".w3"), 16, 64, 30 + e);
  }
  s.add("layers.0.ffn.shared_experts.w1", 16, 64, 40);
  s.add("layers.0.ffn.shared_experts.w2", 64, 16, 41);
  s.add("layers.0.ffn.shared_experts.w3", 16, 64, 42);
  return s;
}

std::map<std::string, float> amax_all(const Store& s, float base) {
  std::map<std::string, float> a;
  float v = base;
  for (const SourceLinear& l : s.linears) a[l.name] = (v += 0.25f);
  return a;
}

const OutputTensor& find(const QuantizedModel& m, const std::string& name) {
  for (const OutputTensor& t : m.tensors)
    if (t.name == name) return t;
  throw Error("no output tensor " + name);
}
bool has(const QuantizedModel& m, const std::string& name) {
  for (const OutputTensor& t : m.tensors)
    if (t.name == name) return true;
  return false;
}
float scalar(const OutputTensor& t, size_t i = 0) {
  float v;
  std::memcpy(&v, static_cast<const uint8_t*>(t.data()) + 4 * i, 4);
  return v;
}
TensorView view_of(DType dtype, Shape shape, void* data) {
  TensorView v;
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.data = data;
  return v;
}
std::vector<uint8_t> bytes(const OutputTensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data());
  return {p, p + shape_numel(t.shape) * dtype_size(t.dtype)};
}

TEST(Quantizer, ParsesSchemesAndNamesTheFlag) {
  EXPECT_EQ(parse_scheme("nvfp4-all", "--scheme"), Scheme::kNvfp4All);
  EXPECT_EQ(parse_scheme("mxfp4-experts", "--scheme"), Scheme::kMxfp4Experts);
  try {
    parse_scheme("nvfp5", "--scheme");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--scheme"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("nvfp5"), std::string::npos);
  }
}

TEST(Quantizer, GlobMatch) {
  EXPECT_TRUE(glob_match("layers.*.attn.*", "layers.12.attn.wq_a"));
  EXPECT_TRUE(glob_match("*.attn.wo_?", "layers.0.attn.wo_b"));
  EXPECT_FALSE(glob_match("layers.*.attn.*", "layers.1.ffn.experts.0.w1"));
  EXPECT_FALSE(glob_match("layers.1", "layers.12"));
  EXPECT_TRUE(glob_match("*", ""));
}

TEST(Quantizer, PlanPerSchemeFollowsTheLayouts) {
  const Store s = one_layer();
  auto fmt = [&](Scheme sc, const std::string& name) {
    QuantizeOptions o;
    o.scheme = sc;
    for (const PlannedLinear& p : plan_linears(s.linears, o))
      if (p.name == name) return std::make_pair(p.format, p.input_scale);
    throw Error("no module " + name);
  };
  using F = LinearFormat;
  EXPECT_EQ(fmt(Scheme::kFp8Block, "layers.0.ffn.experts.0.w1").first, F::kFp8Block);
  EXPECT_EQ(fmt(Scheme::kNvfp4Experts, "layers.0.attn.wq_a").first, F::kFp8Block);
  EXPECT_EQ(fmt(Scheme::kNvfp4Experts, "layers.0.ffn.experts.1.w2"), std::make_pair(F::kNvfp4, true));
  EXPECT_EQ(fmt(Scheme::kNvfp4Experts, "layers.0.ffn.shared_experts.w2").first, F::kFp8Block);
  EXPECT_EQ(fmt(Scheme::kNvfp4All, "layers.0.attn.wkv"), std::make_pair(F::kNvfp4, true));
  EXPECT_EQ(fmt(Scheme::kNvfp4All, "layers.0.attn.wo_a").first, F::kFp8BlockF32);
  EXPECT_EQ(fmt(Scheme::kNvfp4All, "layers.0.attn.indexer.wq_b").first, F::kFp8Block);
  EXPECT_EQ(fmt(Scheme::kNvfp4W4A16, "layers.0.attn.wo_b"), std::make_pair(F::kNvfp4, false));
  for (Scheme sc : {Scheme::kFp8Block, Scheme::kNvfp4All}) {
    EXPECT_EQ(fmt(sc, "layers.0.attn.compressor.wkv").first, F::kKeep);
    EXPECT_EQ(fmt(sc, "layers.0.ffn.gate").first, F::kKeep);
  }
}

TEST(Quantizer, ModuleAFormatCannotHoldIsAnErrorNamingIt) {
  const Store s = one_layer();  // experts' w2 have in_features 16
  QuantizeOptions o;
  o.scheme = Scheme::kMxfp4Experts;
  try {
    plan_linears(s.linears, o);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layers.0.ffn.experts.0.w2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layers.0.ffn.experts.1.w2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("MXFP4"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("experts.0.w1"), std::string::npos) << msg;
  }
}

TEST(Quantizer, BadOptionsNameTheirFlag) {
  const Store s = one_layer();
  QuantizeOptions o;
  o.scheme = Scheme::kFp8Block;
  o.fuse_wqa_wkv = true;
  EXPECT_THROW(
      {
        try {
          plan_linears(s.linears, o);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("--fuse-wqa-wkv"), std::string::npos);
          throw;
        }
      },
      Error);
  for (double bad : {0.0, -1.0, 2e6, std::nan("")}) {
    QuantizeOptions m;
    m.scheme = Scheme::kNvfp4Experts;
    m.input_scale_mult = bad;
    try {
      plan_linears(s.linears, m);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--input-scale-mult"), std::string::npos);
    }
  }
}

TEST(Quantizer, Fp8AndMxfp4TensorsAreTheCodecsBytes) {
  Store s = one_layer();
  s.add("layers.0.ffn.experts.2.w1", 16, 64, 50);
  QuantizeOptions o;
  o.scheme = Scheme::kFp8Block;
  QuantizedModel m = quantize_model(s.linears, {}, o);
  const auto ref = quantize_fp8_block(s.w.at("layers.0.attn.wq_a").data(), 32, 64, ScaleDType::kE8M0);
  const OutputTensor& w = find(m, "layers.0.attn.wq_a.weight");
  EXPECT_EQ(w.dtype, DType::kF8E4M3);
  EXPECT_EQ(bytes(w), ref.weight);
  const OutputTensor& sc = find(m, "layers.0.attn.wq_a.scale");
  EXPECT_EQ(sc.dtype, DType::kF8E8M0);
  EXPECT_EQ(sc.shape, (Shape{1, 1}));
  EXPECT_EQ(bytes(sc), ref.scale);
  EXPECT_FALSE(has(m, "layers.0.attn.wq_a.weight_scale_inv"));

  o.fp8_scale = ScaleDType::kF32;
  m = quantize_model(s.linears, {}, o);
  const OutputTensor& inv = find(m, "layers.0.ffn.experts.0.w2.weight_scale_inv");
  EXPECT_EQ(inv.dtype, DType::kF32);
  EXPECT_EQ(bytes(inv), quantize_fp8_block(s.w.at("layers.0.ffn.experts.0.w2").data(), 64, 16, ScaleDType::kF32).scale);

  Store wide;
  wide.add("layers.0.ffn.experts.0.w2", 64, 32, 60);
  o.scheme = Scheme::kMxfp4Experts;
  m = quantize_model(wide.linears, {}, o);
  const auto mx = quantize_mxfp4(wide.w.at("layers.0.ffn.experts.0.w2").data(), 64, 32);
  EXPECT_EQ(find(m, "layers.0.ffn.experts.0.w2.weight").dtype, DType::kI8);  // the release's INT8
  EXPECT_EQ(find(m, "layers.0.ffn.experts.0.w2.weight").shape, (Shape{64, 16}));
  EXPECT_EQ(bytes(find(m, "layers.0.ffn.experts.0.w2.weight")), mx.weight);
  EXPECT_EQ(bytes(find(m, "layers.0.ffn.experts.0.w2.scale")), mx.scale);
}

TEST(Quantizer, KeptModulesAndTensorsAreCopiedUnchanged) {
  Store s = one_layer();
  std::vector<uint16_t> bf16(2 * 64, 0x3f80);
  s.linears[7].dense = view_of(DType::kBF16, {2, 64}, bf16.data());  // ffn.gate stored dense
  std::vector<float> norm(64, 1.5f);
  QuantizeOptions o;
  o.scheme = Scheme::kFp8Block;
  const std::vector<SourceTensor> tensors = {{"layers.0.attn_norm.weight", view_of(DType::kF32, {64}, norm.data())}};
  const QuantizedModel m = quantize_model(s.linears, tensors, o);
  EXPECT_EQ(find(m, "layers.0.ffn.gate.weight").data(), bf16.data());
  EXPECT_EQ(find(m, "layers.0.ffn.gate.weight").dtype, DType::kBF16);
  EXPECT_EQ(find(m, "layers.0.attn_norm.weight").data(), norm.data());
  const OutputTensor& comp = find(m, "layers.0.attn.compressor.wkv.weight");  // no dense view: exact F32
  EXPECT_EQ(comp.dtype, DType::kF32);
  EXPECT_EQ(std::memcmp(comp.data(), s.w.at("layers.0.attn.compressor.wkv").data(), 32 * 64 * 4), 0);
}

TEST(Quantizer, Nvfp4ExpertsShareTheGlobalScaleOfW1AndW3) {
  const Store s = one_layer();
  QuantizeOptions o;
  o.scheme = Scheme::kNvfp4Experts;
  o.input_amax = amax_all(s, 1.0f);
  const QuantizedModel m = quantize_model(s.linears, {}, o);
  std::vector<float> both = s.w.at("layers.0.ffn.experts.1.w1");
  const auto& w3 = s.w.at("layers.0.ffn.experts.1.w3");
  both.insert(both.end(), w3.begin(), w3.end());
  const auto ref = quantize_nvfp4(both.data(), 32, 64);
  const float g1 = scalar(find(m, "layers.0.ffn.experts.1.w1.weight_scale_2"));
  EXPECT_EQ(g1, ref.weight_scale_2);
  EXPECT_EQ(scalar(find(m, "layers.0.ffn.experts.1.w3.weight_scale_2")), g1);
  EXPECT_EQ(find(m, "layers.0.ffn.experts.1.w1.weight_scale_2").shape, Shape{});
  const auto w1b = bytes(find(m, "layers.0.ffn.experts.1.w1.weight"));
  const auto w3b = bytes(find(m, "layers.0.ffn.experts.1.w3.weight"));
  EXPECT_EQ(w1b, std::vector<uint8_t>(ref.weight.begin(), ref.weight.begin() + 16 * 32));
  EXPECT_EQ(w3b, std::vector<uint8_t>(ref.weight.begin() + 16 * 32, ref.weight.end()));
  EXPECT_EQ(find(m, "layers.0.ffn.experts.1.w3.weight_scale").dtype, DType::kF8E4M3);
  // w2 has its own global scale; the attention stays FP8 without input scales.
  EXPECT_EQ(scalar(find(m, "layers.0.ffn.experts.1.w2.weight_scale_2")),
            quantize_nvfp4(s.w.at("layers.0.ffn.experts.1.w2").data(), 64, 16).weight_scale_2);
  EXPECT_FALSE(has(m, "layers.0.attn.wq_a.input_scale"));
  // input_scale = amax / 2688; w1 and w3 share max(amax(w1), amax(w3)).
  const float a1 = o.input_amax.at("layers.0.ffn.experts.1.w1"), a3 = o.input_amax.at("layers.0.ffn.experts.1.w3");
  EXPECT_FLOAT_EQ(scalar(find(m, "layers.0.ffn.experts.1.w1.input_scale")), std::max(a1, a3) / 2688.0f);
  EXPECT_FLOAT_EQ(scalar(find(m, "layers.0.ffn.experts.1.w3.input_scale")), std::max(a1, a3) / 2688.0f);
  EXPECT_FLOAT_EQ(scalar(find(m, "layers.0.ffn.experts.0.w2.input_scale")),
                  o.input_amax.at("layers.0.ffn.experts.0.w2") / 2688.0f);
}

TEST(Quantizer, UncalibratedExpertsTakeTheMaxOfTheirProjection) {
  const Store s = one_layer();
  QuantizeOptions o;
  o.scheme = Scheme::kNvfp4Experts;
  o.input_amax = amax_all(s, 1.0f);
  o.input_amax.erase("layers.0.ffn.experts.1.w1");
  o.input_amax.erase("layers.0.ffn.experts.1.w3");
  o.input_amax["layers.0.ffn.experts.1.w2"] = 0.0f;  // saw no tokens
  const QuantizedModel m = quantize_model(s.linears, {}, o);
  const float w13 = std::max(o.input_amax.at("layers.0.ffn.experts.0.w1"), o.input_amax.at("layers.0.ffn.experts.0.w3"));
  EXPECT_FLOAT_EQ(m.input_scales.at("layers.0.ffn.experts.1.w1"), w13 / 2688.0f);
  EXPECT_FLOAT_EQ(m.input_scales.at("layers.0.ffn.experts.1.w2"), o.input_amax.at("layers.0.ffn.experts.0.w2") / 2688.0f);
  // A non-expert NVFP4 module without calibration is an error naming it.
  QuantizeOptions all;
  all.scheme = Scheme::kNvfp4All;
  all.input_amax = amax_all(s, 1.0f);
  all.input_amax.erase("layers.0.attn.wo_b");
  try {
    quantize_model(s.linears, {}, all);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.attn.wo_b"), std::string::npos) << e.what();
  }
}

TEST(Quantizer, FusedWqaWkvKeepsPerShardScalesAndTheMultiplierFollowsItsGlob) {
  const Store s = one_layer();
  QuantizeOptions o;
  o.scheme = Scheme::kNvfp4All;
  o.fuse_wqa_wkv = true;
  o.input_amax = amax_all(s, 2.0f);
  o.input_scale_mult = 0.03;
  o.input_scale_mult_modules = {"layers.*.attn.*"};
  const QuantizedModel m = quantize_model(s.linears, {}, o);
  EXPECT_FALSE(has(m, "layers.0.attn.wq_a.weight"));
  EXPECT_FALSE(has(m, "layers.0.attn.wkv.weight"));
  const auto qa = quantize_nvfp4(s.w.at("layers.0.attn.wq_a").data(), 32, 64);
  const auto qb = quantize_nvfp4(s.w.at("layers.0.attn.wkv").data(), 16, 64);
  const OutputTensor& w = find(m, "layers.0.attn.fused_wqa_wkv.weight");
  EXPECT_EQ(w.shape, (Shape{48, 32}));
  std::vector<uint8_t> cat = qa.weight;
  cat.insert(cat.end(), qb.weight.begin(), qb.weight.end());
  EXPECT_EQ(bytes(w), cat);
  EXPECT_EQ(find(m, "layers.0.attn.fused_wqa_wkv.weight_scale").shape, (Shape{48, 4}));
  const OutputTensor& g = find(m, "layers.0.attn.fused_wqa_wkv.weight_scale_2");
  ASSERT_EQ(g.shape, Shape{2});
  EXPECT_EQ(scalar(g, 0), qa.weight_scale_2);
  EXPECT_EQ(scalar(g, 1), qb.weight_scale_2);
  EXPECT_NE(qa.weight_scale_2, qb.weight_scale_2);  // different shards, different global scales
  const OutputTensor& is = find(m, "layers.0.attn.fused_wqa_wkv.input_scale");
  ASSERT_EQ(is.shape, Shape{2});
  EXPECT_FLOAT_EQ(scalar(is, 0), o.input_amax.at("layers.0.attn.wq_a") / 2688.0f * 0.03f);
  EXPECT_FLOAT_EQ(scalar(is, 1), o.input_amax.at("layers.0.attn.wkv") / 2688.0f * 0.03f);
  EXPECT_FLOAT_EQ(scalar(find(m, "layers.0.attn.wo_b.input_scale")), o.input_amax.at("layers.0.attn.wo_b") / 2688.0f * 0.03f);
  // Experts are outside the glob: calibrated scales.
  EXPECT_FLOAT_EQ(scalar(find(m, "layers.0.ffn.experts.0.w2.input_scale")),
                  o.input_amax.at("layers.0.ffn.experts.0.w2") / 2688.0f);
  // wo_a: FP8 with F32 weight_scale_inv, no input scale.
  EXPECT_EQ(find(m, "layers.0.attn.wo_a.weight_scale_inv").dtype, DType::kF32);
  EXPECT_FALSE(has(m, "layers.0.attn.wo_a.input_scale"));

  const auto hf = hf_quant_config_json(m, o);
  EXPECT_EQ(hf["quantization"]["quant_algo"], "MIXED_PRECISION");
  EXPECT_TRUE(hf["quantization"]["kv_cache_quant_algo"].is_null());
  EXPECT_EQ(hf["quantization"]["group_size"], 16);
  EXPECT_TRUE(hf["quantization"]["quantized_layers"].contains("layers.0.attn.fused_wqa_wkv"));
  EXPECT_FALSE(hf["quantization"]["quantized_layers"].contains("layers.0.attn.wq_a"));
  EXPECT_TRUE(hf["quantization"]["quantized_layers"].contains("layers.0.ffn.experts.1.w3"));
  EXPECT_EQ(hf["producer"]["name"], "clawmine");
}

TEST(Quantizer, ConfigJsonPerScheme) {
  const nlohmann::json in = {{"model_type", "deepseek_v4"}, {"hidden_size", 64}, {"expert_dtype", "fp8"}};
  QuantizeOptions o;
  o.scheme = Scheme::kMxfp4Experts;
  auto c = quantized_config_json(in, o);
  EXPECT_EQ(c["hidden_size"], 64);
  EXPECT_EQ(c["expert_dtype"], "fp4");
  const auto& qc = c["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "fp8");
  EXPECT_EQ(qc["fmt"], "e4m3");
  EXPECT_EQ(qc["activation_scheme"], "dynamic");
  EXPECT_EQ(qc["scale_fmt"], "ue8m0");
  EXPECT_EQ(qc["weight_block_size"], nlohmann::json({128, 128}));
  EXPECT_FALSE(qc.contains("moe_quant_algo"));
  o.scheme = Scheme::kNvfp4Experts;
  c = quantized_config_json(in, o);
  EXPECT_FALSE(c.contains("expert_dtype"));
  EXPECT_EQ(c["quantization_config"]["moe_quant_algo"], "NVFP4");
  o.scheme = Scheme::kFp8Block;
  o.fp8_scale = ScaleDType::kF32;
  EXPECT_FALSE(quantized_config_json(in, o)["quantization_config"].contains("scale_fmt"));
  EXPECT_TRUE(hf_quant_config_json(QuantizedModel{}, o).is_null());
}

TEST(Quantizer, WrittenCheckpointReopens) {
  const Store s = one_layer();
  QuantizeOptions o;
  o.scheme = Scheme::kNvfp4W4A16;
  const QuantizedModel m = quantize_model(s.linears, {}, o);
  EXPECT_TRUE(m.input_scales.empty());
  test::TempDir dir;
  write_quantized_checkpoint(dir.path(), m, {{"model_type", "deepseek_v4"}}, o);
  const io::Checkpoint ck = io::Checkpoint::open(dir.path());
  EXPECT_EQ(ck.size(), m.tensors.size());
  const io::TensorInfo* w = ck.find("layers.0.attn.wq_b.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kU8);
  EXPECT_EQ(w->shape, (Shape{64, 16}));
  EXPECT_EQ(ck.find("layers.0.attn.wq_b.input_scale"), nullptr);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "hf_quant_config.json"));
  std::ifstream f(dir.path() / "hf_quant_config.json");
  const auto hf = nlohmann::json::parse(f);
  EXPECT_EQ(hf["quantization"]["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(hf["quantization"]["quantized_layers"]["layers.0.attn.wq_b"]["quant_algo"], "W4A16_NVFP4");
}

}  // namespace
}  // namespace clawmine::quant
