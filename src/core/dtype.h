// Element types of checkpoint tensors and their exact conversions to float.
#pragma once

#include <bit>
#include <cstdint>
#include <optional>
#include <string_view>

namespace whale {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kU32,
  kI32,
  kU64,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kF8E4M3,  // float8_e4m3fn: no infinities, NaN = 0x7F / 0xFF, max ±448
  kF8E5M2,
  kE8M0,  // float8_e8m0fnu: a power-of-two scale 2^(e-127); 0xFF = NaN
};

// Size of one element in bytes.
int dtype_size(DType t);
// The safetensors spelling ("BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType t);
// Parses the safetensors spelling; nullopt for an unknown name.
std::optional<DType> dtype_from_name(std::string_view name);

inline float bf16_to_f32(uint16_t v) { return std::bit_cast<float>(uint32_t{v} << 16); }

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float f);

// Exact value of every e4m3fn byte (256 entries).
const float* fp8_e4m3_table();
inline float fp8_e4m3_to_f32(uint8_t v) { return fp8_e4m3_table()[v]; }
// Nearest e4m3fn value, saturating to ±448 (used by tests and quantizers).
uint8_t f32_to_fp8_e4m3(float f);

float fp8_e5m2_to_f32(uint8_t v);

// UE8M0 block scale: 2^(e - 127); 0xFF is NaN.
float e8m0_to_f32(uint8_t e);

}  // namespace whale
