// What the kernels of whale's block formats share (quant_kernels.cpp, quant_lanes_kernels.cpp):
// how a kQ8/kQ4 matrix's rows are walked, and where each column's code lies in a token's
// prepared activations (quant_kernels.h, PreparedLayout).
#pragma once

#include <cstdint>

#include "ops/matrix.h"

namespace whale::cpu::quant {

// Columns in a group: four blocks, the unit of the wide kernels (64 bytes of 4-bit codes).
inline constexpr int64_t kGroup = 4 * ops::kQuantBlock;
inline constexpr int64_t kHalf = ops::kQuantBlock / 2;
// Bytes ahead of the current position that the kernels prefetch (see kBf16Prefetch).
inline constexpr int64_t kPrefetch = 16384;

inline const uint8_t* row_data(const ops::Matrix& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * w.row_bytes();
}

// The codes and f16 scales of rows r..r+R-1.
template <int R>
struct RowPointers {
  const uint8_t* data[R];
  const uint16_t* scales[R];
  RowPointers(const ops::Matrix& w, int64_t r) {
    for (int i = 0; i < R; ++i) {
      data[i] = row_data(w, r + i);
      scales[i] = static_cast<const uint16_t*>(w.scale) + (w.row_offset + r + i) * w.scale_cols;
    }
  }
};

// Where column c's code lies in a token's prepared `hi` and `lo` of k columns: kQ4 orders each
// full group of 128 columns as its kernels unpack nibbles (block j's low nibbles, its columns
// 32j..32j+15, at 16j; its high ones at 64 + 16j); other columns are in natural order. Four
// columns from a multiple of 4 lie side by side either way.
inline int64_t prepared_position(ops::WeightFormat format, int64_t k, int64_t c) {
  if (format != ops::WeightFormat::kQ4 || c >= k / kGroup * kGroup) return c;
  const int64_t b = c / ops::kQuantBlock, i = c % ops::kQuantBlock;
  return (b / 4) * kGroup + (b % 4) * kHalf + (i < kHalf ? i : 2 * ops::kQuantBlock + i - kHalf);
}

}  // namespace whale::cpu::quant

#if defined(__x86_64__)
#define WHALE_AVX512_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma"
#endif
