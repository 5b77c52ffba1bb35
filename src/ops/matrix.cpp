#include "ops/matrix.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstring>

#include "ops/quant.h"

namespace whale::ops {

Matrix Matrix::row_slice(int64_t begin, int64_t count) const {
  assert(begin >= 0 && count >= 0 && begin + count <= rows);
  Matrix m = *this;
  m.data = static_cast<const uint8_t*>(data) + begin * row_bytes();
  m.rows = count;
  m.row_offset = row_offset + begin;
  return m;
}

float block_scale(const Matrix& m, int64_t br, int64_t bc) {
  const int64_t i = br * m.scale_cols + bc;
  if (m.scale_dtype == DType::kE8M0) return e8m0_to_f32(static_cast<const uint8_t*>(m.scale)[i]);
  if (m.scale_dtype == DType::kF16) {
    uint16_t h;
    std::memcpy(&h, static_cast<const uint8_t*>(m.scale) + i * 2, 2);
    return f16_to_f32(h);
  }
  float s;  // memcpy: a file may place tensors at any byte offset
  std::memcpy(&s, static_cast<const uint8_t*>(m.scale) + i * 4, 4);
  return s;
}

namespace {
// Loads element i of 16-bit data at any alignment.
inline uint16_t load_u16(const void* p, int64_t i) {
  uint16_t v;
  std::memcpy(&v, static_cast<const uint8_t*>(p) + 2 * i, 2);
  return v;
}
}  // namespace

void convert_to_f32(DType dtype, const void* src, int64_t n, float* out) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kBF16: {
      // Byte by byte: any alignment, and a loop the compiler vectorises.
      const auto* b = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        out[i] = std::bit_cast<float>(uint32_t{b[2 * i]} << 16 | uint32_t{b[2 * i + 1]} << 24);
      }
      return;
    }
    case DType::kF16: {
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(load_u16(src, i));
      return;
    }
    case DType::kF8E4M3: {
      const auto* s = static_cast<const uint8_t*>(src);
      const float* table = fp8_e4m3_table();
      for (int64_t i = 0; i < n; ++i) out[i] = table[s[i]];
      return;
    }
    default:
      assert(false && "dtype not usable as a weight");
  }
}

void Matrix::dequantize_row(int64_t r, int64_t c0, int64_t c1, float* out) const {
  if (format != WeightFormat::kDense) {
    const int64_t br = row_offset + r;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t block = c / kQuantBlock;
      const int q = weight_code(*this, r, c);
      out[c - c0] = static_cast<float>(q) * block_scale(*this, br, block);
    }
    return;
  }
  const auto* row = static_cast<const uint8_t*>(data) + (r * cols + c0) * dtype_size(dtype);
  convert_to_f32(dtype, row, c1 - c0, out);
  if (!quantized()) return;
  const int64_t br = (row_offset + r) / block_rows;
  for (int64_t b0 = c0; b0 < c1;) {
    const int64_t bc = b0 / block_cols;
    const int64_t b1 = std::min(c1, (bc + 1) * block_cols);
    const float s = block_scale(*this, br, bc);
    for (int64_t c = b0; c < b1; ++c) out[c - c0] *= s;
    b0 = b1;
  }
}

float Matrix::at(int64_t r, int64_t c) const {
  float v;
  if (format != WeightFormat::kDense) {
    dequantize_row(r, c, c + 1, &v);
    return v;
  }
  const auto* p = static_cast<const uint8_t*>(data) + (r * cols + c) * dtype_size(dtype);
  convert_to_f32(dtype, p, 1, &v);
  if (quantized()) v *= block_scale(*this, (row_offset + r) / block_rows, c / block_cols);
  return v;
}

}  // namespace whale::ops
