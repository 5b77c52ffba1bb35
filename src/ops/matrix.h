// A weight matrix as stored in a checkpoint, viewed in place: bf16, f16, f32, or fp8 e4m3 with
// one scale per block (DeepSeek's `weight_scale_inv`, a multiplier despite the name).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace whale::ops {

struct Matrix {
  DType dtype = DType::kF32;
  const void* data = nullptr;  // row 0 of this view, rows of `cols` elements, contiguous
  int64_t rows = 0;
  int64_t cols = 0;

  // FP8 block scales, [ceil(stored_rows / block_rows), scale_cols], f32 or e8m0.
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
  // Bytes the stored elements of this view take (scales excluded).
  int64_t nbytes() const { return rows * cols * dtype_size(dtype); }
};

// Scale multiplier of block (br, bc).
float block_scale(const Matrix& m, int64_t br, int64_t bc);

// Converts n stored elements of a non-quantized dtype (f32, bf16, f16, e4m3 without scale) to f32.
void convert_to_f32(DType dtype, const void* src, int64_t n, float* out);

}  // namespace whale::ops
