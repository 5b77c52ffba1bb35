#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace whale {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  int size;
};

constexpr std::array<DTypeInfo, 16> kDTypes = {{
    {DType::kBool, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kU16, "U16", 2},
    {DType::kI16, "I16", 2},
    {DType::kU32, "U32", 4},
    {DType::kI32, "I32", 4},
    {DType::kU64, "U64", 8},
    {DType::kI64, "I64", 8},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
    {DType::kE8M0, "F8_E8M0", 1},
}};

const DTypeInfo& info(DType t) { return kDTypes[static_cast<size_t>(t)]; }

// Decodes a sign/exponent/mantissa minifloat with the given field widths and bias.
float decode_minifloat(uint32_t bits, int exp_bits, int man_bits, int bias) {
  const uint32_t sign = (bits >> (exp_bits + man_bits)) & 1u;
  const uint32_t exp = (bits >> man_bits) & ((1u << exp_bits) - 1);
  const uint32_t man = bits & ((1u << man_bits) - 1);
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), 1 - bias - man_bits);  // subnormal
  } else {
    v = std::ldexp(static_cast<float>(man + (1u << man_bits)),
                   static_cast<int>(exp) - bias - man_bits);
  }
  return sign ? -v : v;
}

std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    // e4m3fn: bias 7, no infinities; only S.1111.111 is NaN.
    t[b] =
        (b & 0x7F) == 0x7F ? std::numeric_limits<float>::quiet_NaN() : decode_minifloat(b, 4, 3, 7);
  }
  return t;
}

}  // namespace

int dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.type;
  }
  return std::nullopt;
}

float f16_to_f32(uint16_t v) {
  const uint32_t exp = (v >> 10) & 0x1F;
  if (exp == 0x1F) {
    const float inf = std::numeric_limits<float>::infinity();
    if (v & 0x3FF) return std::numeric_limits<float>::quiet_NaN();
    return (v & 0x8000) ? -inf : inf;
  }
  return decode_minifloat(v, 5, 10, 15);
}

uint16_t f32_to_f16(float f) {
  // Conversion through the hardware-independent path: _Float16 is available in GCC 12 on x86-64.
  return std::bit_cast<uint16_t>(static_cast<_Float16>(f));
}

const float* fp8_e4m3_table() {
  static const std::array<float, 256> table = make_e4m3_table();
  return table.data();
}

uint8_t f32_to_fp8_e4m3(float f) {
  if (std::isnan(f)) return 0x7F;
  const float* t = fp8_e4m3_table();
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const float a = std::min(std::fabs(f), 448.0f);
  // Positive codes 0x00..0x7E are increasing: pick the nearest, ties to even mantissa.
  uint8_t best = 0;
  for (uint8_t c = 1; c <= 0x7E; ++c) {
    const float dc = std::fabs(t[c] - a), db = std::fabs(t[best] - a);
    if (dc < db || (dc == db && (c & 1) == 0)) best = c;
  }
  return static_cast<uint8_t>(sign | best);
}

float fp8_e5m2_to_f32(uint8_t v) { return f16_to_f32(static_cast<uint16_t>(v) << 8); }

float e8m0_to_f32(uint8_t e) {
  if (e == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(e) - 127);
}

}  // namespace whale
