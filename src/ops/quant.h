// whale's block formats (ops::WeightFormat): quantizers for weights and for the activations
// the quantized products multiply them with. A product with a kQ8 or kQ4 matrix is defined as
// Σ_blocks scale_w · scale_x · Σ q_w · q_x, with the activations cut into the same 32-column
// blocks and rounded to int8 (scale_x = max|x| / 127); every backend computes exactly that.
#pragma once

#include <cstdint>

#include "ops/matrix.h"

namespace whale::ops {

// Rounds one block of kQuantBlock activations to int8 codes; returns their scale.
float quantize_activation_block(const float* x, int8_t* q);

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
void quantize_row_q8(const float* x, int64_t n, int8_t* codes, uint16_t* scales);
void quantize_row_q4(const float* x, int64_t n, uint8_t* packed, uint16_t* scales);

}  // namespace whale::ops
