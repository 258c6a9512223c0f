// Element types of checkpoint tensors and activations, with their names as safetensors spells
// them, sizes, and the scalar conversions every backend shares. Narrowing encoders with
// saturation live in quant/; here are the exact widenings and float32 -> bf16/f16 rounding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace clawmine {

enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3, kF8E8M0, kU8, kI8, kI32, kI64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", "F8_E4M3", ...
std::optional<DType> dtype_from_name(std::string_view name);

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// OCP FP8 E4M3 ("e4m3fn"): bias 7, no infinities, 0x7f/0xff are NaN, max finite 448.
float e4m3_to_f32(uint8_t b);
// E8M0: a pure power of two 2^(b-127); 0xff is NaN.
float e8m0_to_f32(uint8_t b);

// Reads element i of a buffer of type t as float32 (integer types convert by value).
float load_as_f32(const void* data, DType t, size_t i);

}  // namespace clawmine
