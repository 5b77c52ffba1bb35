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

// The integer code of element (r, c) of a kQ8 or kQ4 matrix (kQ4 codes less 8: -8..7).
int weight_code(const Matrix& w, int64_t r, int64_t c);

// One row of n weights (n a multiple of kQuantBlock) into codes and f16 scales (n / 32).
// The scale of each block is chosen to minimise the block's squared error.
void quantize_row_q8(const float* x, int64_t n, int8_t* codes, uint16_t* scales);
void quantize_row_q4(const float* x, int64_t n, uint8_t* packed, uint16_t* scales);

}  // namespace whale::ops
