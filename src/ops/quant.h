// whale's block formats (ops::WeightFormat): the weight quantizers and the codes' meaning. A
// kQ8 or kQ4 matrix stands for the values code × scale of each 32-column block, and its product
// with activations is that matrix's exact product. Backends may round on the way, within a bound
// each states (the CPU's vector kernels carry activations as 16-bit block codes, its tiles in
// bf16).
#pragma once

#include <cstdint>

#include "ops/matrix.h"

namespace whale::ops {

// The 16 values a kQ4 code stands for, in units of the block scale. They are not evenly spaced:
// they are the centroids that Lloyd's algorithm gives for blocks of 32 Student-t (5 degrees of
// freedom) samples divided by the block's signed largest |x| (so the largest element is at +1),
// scaled to put that element at 127 and rounded. On such blocks they leave 42% less squared
// error than evenly spaced codes (scale · (q − 8)), on Gaussian blocks 26% less (see
// dev/q4_levels.cpp, which derives them). As int8 they go through the same integer products as
// q8 codes.
inline constexpr int8_t kQ4Levels[16] = {-113, -88, -68, -52, -38, -25, -14, -3,
                                         7,    18,  30,  44,  59,  77,  99,  127};
// Names this table in config.json (whale_quantization.q4_levels), so that 4-bit files of another
// table are refused instead of read wrongly.
inline constexpr const char* kQ4LevelsName = "lloyd-t5-v1";

// The integer code of element (r, c) of a kQ8 or kQ4 matrix (for kQ4, its level).
int weight_code(const Matrix& w, int64_t r, int64_t c);

// One row of n weights (n a multiple of kQuantBlock) into codes and f16 scales (n / 32).
// The scale of each block is chosen to minimise the block's squared error (for q4, the scale is
// signed: the block's largest |x| goes to the +127 end of the levels).
// `importance` (n values, or null for all equal) weighs each column's squared error in that
// choice: the mean square of the activations it multiplies, measured on calibration text.
void quantize_row_q8(const float* x, int64_t n, int8_t* codes, uint16_t* scales,
                     const float* importance = nullptr);
void quantize_row_q4(const float* x, int64_t n, uint8_t* packed, uint16_t* scales,
                     const float* importance = nullptr);

}  // namespace whale::ops
