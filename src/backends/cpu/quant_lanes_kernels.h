// q8 and q4 products with 16 tokens to a vector (AVX-512 VNNI; prefill without AMX). Each
// token's prepared activations (quant_kernels.h) are packed so that a 4-column group's codes of
// 16 tokens fill one register, and each row's 4 weights of the group are broadcast against it:
// a block's scale work is done once per 16 tokens instead of once per token.
#pragma once

#include <cstdint>

#include "backends/cpu/isa.h"
#include "ops/matrix.h"

namespace whale::cpu {

// Whether the CPU (and isa) can run them.
bool has_lanes_kernels(Isa isa);
// The packed bytes of 16 tokens of k columns.
int64_t lanes_bytes(int64_t k, ops::WeightFormat format);
// Packs 16 tokens' prepared activations (at xp + t·ldx) into lanes_bytes(k, format) bytes.
void pack_lanes(const uint8_t* xp, int64_t ldx, int64_t k, ops::WeightFormat format, uint8_t* out);
// out[t·ldo + i] = row (r + i) of w times packed token t, for i < rows (1..4) and t < tokens.
// Exact in the integer part as the other kernels; the f32 sums of the blocks run in another
// order than theirs (a token's result depends on whether it went 16 to a vector).
void lanes_rows(const uint8_t* packed, int64_t k, int tokens, const ops::Matrix& w, int64_t r,
                int rows, float* out, int64_t ldo);

}  // namespace whale::cpu
