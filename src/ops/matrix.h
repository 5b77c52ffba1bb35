// A weight matrix as stored in a checkpoint, viewed in place: bf16, f16, f32, fp8 e4m3 with
// one scale per block (DeepSeek's `weight_scale_inv`, a multiplier despite the name), or one of
// whale's block formats (see WeightFormat).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace whale::ops {

// whale's block-quantized formats: each row is cut into blocks of 32 columns, each block with an
// f16 scale ([rows, cols / 32], `<name>_scale` in the checkpoint).
//   kQ8: int8 codes q, value = scale · q (q in -127..127).
//   kQ4: 4-bit codes q in 0..15, value = scale · kQ4Levels[q] (ops/quant.h), two per byte,
//        16 bytes per block: byte i of a block holds column i in its low nibble and column
//        i + 16 in its high one.
enum class WeightFormat : uint8_t { kDense, kQ8, kQ4 };
constexpr int64_t kQuantBlock = 32;

struct Matrix {
  WeightFormat format = WeightFormat::kDense;
  DType dtype = DType::kF32;  // kI8 for kQ8, kU8 for kQ4
  const void* data = nullptr;  // row 0 of this view, rows of `cols` elements, contiguous
  int64_t rows = 0;
  int64_t cols = 0;

  // Block scales, [ceil(stored_rows / block_rows), scale_cols]: f32 or e8m0 for fp8, f16 for
  // whale's formats (block_rows 1, block_cols 32).
  const void* scale = nullptr;
  DType scale_dtype = DType::kF32;
  int64_t scale_cols = 0;
  int64_t block_rows = 128;
  int64_t block_cols = 128;
  int64_t row_offset = 0;  // first row of this view within the stored matrix

  bool quantized() const { return scale != nullptr; }
  // The view of rows [begin, begin + count); keeps block scales aligned.
  Matrix row_slice(int64_t begin, int64_t count) const;
  // Dequantized element (slow; for references and tests).
  float at(int64_t r, int64_t c) const;
  // Writes columns [c0, c1) of row r as f32 into out[0, c1 - c0).
  void dequantize_row(int64_t r, int64_t c0, int64_t c1, float* out) const;
  // Bytes one stored row takes, and the stored elements of this view (scales excluded).
  int64_t row_bytes() const {
    return format == WeightFormat::kQ4 ? cols / 2 : cols * dtype_size(dtype);
  }
  int64_t nbytes() const { return rows * row_bytes(); }
};

// Scale multiplier of block (br, bc).
float block_scale(const Matrix& m, int64_t br, int64_t bc);

// Converts n stored elements of a non-quantized dtype (f32, bf16, f16, e4m3 without scale) to f32.
void convert_to_f32(DType dtype, const void* src, int64_t n, float* out);

}  // namespace whale::ops
