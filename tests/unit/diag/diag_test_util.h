// Helpers for the diag tests: NVFP4 linears and experts quantized with the codec from random
// weights, owning their bytes (optionally with a static input_scale).
#pragma once

#include <memory>
#include <string>

#include "quant/codec.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {

struct OwnedLinear {
  HostTensor weight, scale, global, input;
  model::deepseek_v4::LinearWeight lw;
};

// W ~ N(0, 0.05^2) [O, I] quantized to NVFP4; input_scale 0 means none.
inline OwnedLinear nvfp4_linear(const std::string& name, int64_t O, int64_t I, uint32_t seed, float input_scale = 0.0f) {
  OwnedLinear o;
  const std::vector<float> w = random_normal(static_cast<size_t>(O * I), seed, 0.05f);
  const quant::QuantizedWeight q = quant::quantize_nvfp4(w.data(), O, I);
  o.weight = HostTensor(q.weight_dtype, q.weight_shape);
  o.weight.bytes = q.weight;
  o.scale = HostTensor(q.scale_dtype, q.scale_shape);
  o.scale.bytes = q.scale;
  o.global = HostTensor(DType::kF32, {});
  o.global.as<float>()[0] = q.weight_scale_2;
  o.lw.name = name;
  o.lw.out_features = O;
  o.lw.in_features = I;
  o.lw.format = model::deepseek_v4::WeightFormat::kNvfp4;
  o.lw.weight = o.weight.view();
  o.lw.scale = o.scale.view();
  o.lw.weight_scale_2 = o.global.view();
  if (input_scale != 0.0f) {
    o.input = HostTensor(DType::kF32, {});
    o.input.as<float>()[0] = input_scale;
    o.lw.input_scale = o.input.view();
  }
  return o;
}

// Held by pointer so the views in `w` stay valid when the struct moves.
struct OwnedExpert {
  std::shared_ptr<OwnedLinear> w1, w3, w2;
  model::deepseek_v4::ExpertWeights w;
};

inline OwnedExpert nvfp4_expert(const std::string& prefix, int64_t D, int64_t I, uint32_t seed) {
  OwnedExpert e;
  e.w1 = std::make_shared<OwnedLinear>(nvfp4_linear(prefix + ".w1", I, D, seed));
  e.w3 = std::make_shared<OwnedLinear>(nvfp4_linear(prefix + ".w3", I, D, seed + 1000));
  e.w2 = std::make_shared<OwnedLinear>(nvfp4_linear(prefix + ".w2", D, I, seed + 2000));
  e.w.w1 = e.w1->lw;
  e.w.w3 = e.w3->lw;
  e.w.w2 = e.w2->lw;
  return e;
}

}  // namespace clawmine::test
