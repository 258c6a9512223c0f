// Helpers for the CUDA linear / MoE tests: linear weights of every storage format made with the
// quant/codec.h quantizers from random normal weights, kept on the host (views for the CPU
// reference) and uploaded view by view to the GPU (a device LinearWeight, as Model::place makes
// it); activations with identical values on both sides; the CPU reference on windows of output
// rows (big shapes: the first, a middle and the last block of rows, so every part of the GPU
// grid is checked without a full float64 CPU product).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "model/deepseek_v4/weights.h"
#include "quant/codec.h"
#include "unit/backend_cuda/cuda_test_util.h"

namespace clawmine::test {

using model::deepseek_v4::ExpertWeights;
using model::deepseek_v4::LinearWeight;
using model::deepseek_v4::WeightFormat;

// Storage formats under test (dense dtypes and FP8 scale dtypes separately).
enum class TestFormat { kF32, kBF16, kF16, kFp8E8M0, kFp8F32, kMxfp4, kNvfp4 };
inline constexpr TestFormat kAllFormats[] = {TestFormat::kF32,     TestFormat::kBF16,   TestFormat::kF16,
                                             TestFormat::kFp8E8M0, TestFormat::kFp8F32, TestFormat::kMxfp4,
                                             TestFormat::kNvfp4};
inline const char* format_label(TestFormat f) {
  switch (f) {
    case TestFormat::kF32: return "dense-F32";
    case TestFormat::kBF16: return "dense-BF16";
    case TestFormat::kF16: return "dense-F16";
    case TestFormat::kFp8E8M0: return "fp8-E8M0";
    case TestFormat::kFp8F32: return "fp8-F32scale";
    case TestFormat::kMxfp4: return "mxfp4";
    case TestFormat::kNvfp4: return "nvfp4";
  }
  return "?";
}
// in_features a format accepts.
inline bool format_accepts(TestFormat f, int64_t in) {
  if (f == TestFormat::kMxfp4) return in % 32 == 0;
  if (f == TestFormat::kNvfp4) return in % 16 == 0;
  return true;
}

// Normal(0, stddev) values, filled by several threads (hundreds of millions for the head).
inline std::vector<float> fast_normal(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::vector<float> v(n);
  const size_t parts = std::max<size_t>(1, std::min<size_t>(16, n / (1 << 20)));
  std::vector<std::thread> th;
  for (size_t p = 0; p < parts; ++p) {
    th.emplace_back([&, p] {
      std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(p) + 1u);
      std::normal_distribution<float> dist(0.0f, stddev);
      const size_t b = n * p / parts, e = n * (p + 1) / parts;
      for (size_t i = b; i < e; ++i) v[i] = dist(rng);
    });
  }
  for (auto& t : th) t.join();
  return v;
}

// A linear weight in host memory (for the CPU) and its device copy (for CUDA).
struct TestLinear {
  std::vector<uint8_t> w_bytes, s_bytes;
  float scale2 = 0.0f, input_scale = 0.0f;
  LinearWeight host, dev;
  ops::DeviceBuffer dw, ds, ds2, dis;
};

// Quantizes/stores w [out, in] (row-major floats) in format f, on the host only (thread-safe:
// the big tests quantize several formats at once). input_scale (NVFP4 only) is attached when
// given, with its trust flag.
inline std::unique_ptr<TestLinear> quantize_linear(TestFormat f, const std::vector<float>& w, int64_t out, int64_t in,
                                                   const std::string& name,
                                                   std::optional<float> input_scale = std::nullopt,
                                                   bool trusted = true) {
  auto t = std::make_unique<TestLinear>();
  LinearWeight& h = t->host;
  h.name = name;
  h.out_features = out;
  h.in_features = in;
  DType wdt = DType::kF32, sdt = DType::kF8E8M0;
  Shape wshape{out, in}, sshape;
  switch (f) {
    case TestFormat::kF32:
    case TestFormat::kBF16:
    case TestFormat::kF16: {
      h.format = WeightFormat::kDense;
      wdt = f == TestFormat::kF32 ? DType::kF32 : f == TestFormat::kBF16 ? DType::kBF16 : DType::kF16;
      t->w_bytes.resize(w.size() * dtype_size(wdt));
      for (size_t i = 0; i < w.size(); ++i) {
        if (wdt == DType::kF32) {
          std::memcpy(t->w_bytes.data() + 4 * i, &w[i], 4);
        } else {
          const uint16_t b = wdt == DType::kBF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
          std::memcpy(t->w_bytes.data() + 2 * i, &b, 2);
        }
      }
      break;
    }
    case TestFormat::kFp8E8M0:
    case TestFormat::kFp8F32:
    case TestFormat::kMxfp4:
    case TestFormat::kNvfp4: {
      quant::QuantizedWeight q =
          f == TestFormat::kMxfp4   ? quant::quantize_mxfp4(w.data(), out, in)
          : f == TestFormat::kNvfp4 ? quant::quantize_nvfp4(w.data(), out, in)
                                    : quant::quantize_fp8_block(w.data(), out, in,
                                                                f == TestFormat::kFp8E8M0 ? quant::ScaleDType::kE8M0
                                                                                          : quant::ScaleDType::kF32);
      h.format = f == TestFormat::kMxfp4   ? WeightFormat::kMxfp4
                 : f == TestFormat::kNvfp4 ? WeightFormat::kNvfp4
                                           : WeightFormat::kFp8Block;
      wdt = q.weight_dtype;
      wshape = q.weight_shape;
      sdt = q.scale_dtype;
      sshape = q.scale_shape;
      t->w_bytes = std::move(q.weight);
      t->s_bytes = std::move(q.scale);
      t->scale2 = q.weight_scale_2;
      break;
    }
  }
  h.weight = TensorView{wdt, Device::kCpu, wshape, t->w_bytes.data()};
  if (!t->s_bytes.empty()) h.scale = TensorView{sdt, Device::kCpu, sshape, t->s_bytes.data()};
  if (f == TestFormat::kNvfp4) {
    h.weight_scale_2 = TensorView{DType::kF32, Device::kCpu, {1}, &t->scale2};
    if (input_scale) {
      t->input_scale = *input_scale;
      h.input_scale = TensorView{DType::kF32, Device::kCpu, {1}, &t->input_scale};
      h.input_scale_trusted = trusted;
    }
  }
  return t;
}

// Uploads every view of t.host (as Model::place does) and points t.dev at the copies.
inline void upload_linear(ops::Backend& cuda, TestLinear& t) {
  const LinearWeight& h = t.host;
  t.dev = h;
  t.dw = upload_raw(cuda, h.weight);
  t.dev.weight = t.dw.view();
  if (!h.scale.empty()) {
    t.ds = upload_raw(cuda, h.scale);
    t.dev.scale = t.ds.view();
  }
  if (!h.weight_scale_2.empty()) {
    t.ds2 = upload_raw(cuda, h.weight_scale_2);
    t.dev.weight_scale_2 = t.ds2.view();
  }
  if (!h.input_scale.empty()) {
    t.dis = upload_raw(cuda, h.input_scale);
    t.dev.input_scale = t.dis.view();
  }
}

inline std::unique_ptr<TestLinear> make_linear(ops::Backend& cuda, TestFormat f, const std::vector<float>& w,
                                               int64_t out, int64_t in, const std::string& name,
                                               std::optional<float> input_scale = std::nullopt,
                                               bool trusted = true) {
  auto t = quantize_linear(f, w, out, in, name, input_scale, trusted);
  upload_linear(cuda, *t);
  return t;
}

// Output rows [r0, r1) of a host weight as a weight of its own (FP8: r0 a multiple of 128).
inline LinearWeight row_window(const LinearWeight& w, int64_t r0, int64_t r1) {
  LinearWeight s = w;
  s.out_features = r1 - r0;
  const int64_t row_bytes = static_cast<int64_t>(w.weight.nbytes()) / w.out_features;
  s.weight.data = static_cast<uint8_t*>(w.weight.data) + r0 * row_bytes;
  s.weight.shape[0] = r1 - r0;
  if (!w.scale.empty()) {
    const int64_t srow_bytes = static_cast<int64_t>(w.scale.nbytes()) / w.scale.dim(0);
    const bool fp8 = w.format == WeightFormat::kFp8Block;
    s.scale.data = static_cast<uint8_t*>(w.scale.data) + (fp8 ? r0 / 128 : r0) * srow_bytes;
    s.scale.shape[0] = fp8 ? (r1 - r0 + 127) / 128 : r1 - r0;
  }
  return s;
}

// Row windows to check: all rows for small weights, else three 128-aligned blocks of 128 rows
// (first, middle, last).
inline std::vector<std::pair<int64_t, int64_t>> check_windows(int64_t out) {
  if (out <= 640) return {{0, out}};
  const int64_t mid = (out / 2) / 128 * 128, last = (out - 1) / 128 * 128;
  return {{0, 128}, {mid, mid + 128}, {last, out}};
}

// Activations: host F32 values already rounded to `act`, and their device copy in `act`.
struct TestActs {
  std::vector<float> host;
  ops::DeviceBuffer dev;
  TensorView host_view(const Shape& shape) {
    return TensorView{DType::kF32, Device::kCpu, shape, host.data()};
  }
};
inline TestActs make_acts(ops::Backend& cuda, const Shape& shape, DType act, uint32_t seed, float stddev = 1.0f) {
  TestActs a;
  a.host = fast_normal(static_cast<size_t>(shape_numel(shape)), seed, stddev);
  if (act == DType::kBF16)
    for (float& v : a.host) v = bf16_to_f32(f32_to_bf16(v));
  a.dev = upload_f32(cuda, a.host, shape, act);
  return a;
}

// The CPU reference of x [T, in] @ W^T on the given row windows, gathered as [T, sum of windows];
// and the same columns of a full GPU result got [T, out].
inline std::vector<float> cpu_linear_windows(ops::Backend& cpu, TestActs& x, int64_t T, const LinearWeight& w,
                                             const std::vector<std::pair<int64_t, int64_t>>& windows) {
  int64_t cols = 0;
  for (auto [a, b] : windows) cols += b - a;
  std::vector<float> ref(static_cast<size_t>(T * cols));
  int64_t c0 = 0;
  for (auto [a, b] : windows) {
    const LinearWeight s = row_window(w, a, b);
    std::vector<float> part(static_cast<size_t>(T * (b - a)), std::nanf(""));
    cpu.linear(x.host_view({T, w.in_features}), s, TensorView{DType::kF32, Device::kCpu, {T, b - a}, part.data()});
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(part.data() + t * (b - a), b - a, ref.data() + t * cols + c0);
    c0 += b - a;
  }
  return ref;
}
inline std::vector<float> gather_windows(const std::vector<float>& got, int64_t T, int64_t out,
                                         const std::vector<std::pair<int64_t, int64_t>>& windows) {
  std::vector<float> r;
  for (int64_t t = 0; t < T; ++t)
    for (auto [a, b] : windows) r.insert(r.end(), got.begin() + t * out + a, got.begin() + t * out + b);
  return r;
}

inline double act_budget(DType act) { return act == DType::kF32 ? kF32Budget : kBf16Budget; }

}  // namespace clawmine::test
