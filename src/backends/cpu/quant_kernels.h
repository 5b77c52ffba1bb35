// Products of whale's block formats (ops::WeightFormat kQ8, kQ4) with a few tokens' activations
// (decode): each token's activations are first rounded to integer codes per 32-column block
// (prepare_quantized), then up to four weight rows at a time are multiplied with integer dot
// products (VNNI where the CPU has it), exact in their integer part. A block's codes are
// q = round(x / s), s = max|x| / q_max, so each product is within about Σ_blocks max|x| · Σ|w| /
// (2 · q_max) of the exact one.
// - kQ8: 16-bit codes (q_max 32767). int8 activations, as most engines use, cost q8 half its
//   disagreement with bf16 on whale-mini; 16 bits cost the kernels a shift and a second byte
//   product per block.
// - kQ4: 8-bit codes (q_max 127), one byte product per four weights. Against 16-bit codes they
//   raised q4's KL on whale-mini by 1-4% and left its top-1 agreement within ±0.1 points (its
//   error is its weights'), and made its prefill 1.1-1.5× as fast on AVX-512 (bench/README).
#pragma once

#include <cstdint>

#include "backends/cpu/isa.h"
#include "ops/matrix.h"

namespace whale::cpu {

// Where the parts of one token's prepared activations lie, for k columns (a multiple of 32).
// kQ8: each code q = 256 · hi + lo, hi signed and lo unsigned (the high and low bytes of q).
// kQ4: q = hi, and lo is 0.
struct PreparedLayout {
  int64_t hi = 0;      // int8 [k]: natural order, except that for kQ4 each full group of 128
                       // columns is ordered as the kernels unpack nibbles (see quant_kernels.cpp)
  int64_t lo = 0;      // uint8 [k], in the same order
  int64_t scales = 0;  // f32 [k / 32]
  int64_t zero = 0;    // int32 [k / 128][32]: the zero-point correction per VNNI lane of each
                       // full group (kQ4: 16 lanes; kQ8: 2 × 16, see quant_kernels.cpp)
  int64_t codes = 0;   // int16 [k]: the codes themselves, in hi's order, for the AVX2 q8
                       // kernel's 16-bit products and the scalar block sums
  int64_t bytes = 0;   // total
};
PreparedLayout prepared_layout(int64_t k);

// out: prepared_layout(k).bytes bytes. The same bytes for every isa (vector code where it has
// AVX-512).
void prepare_quantized(const float* x, int64_t k, ops::WeightFormat format, uint8_t* out, Isa isa);

// One block of 32 activations to 16-bit codes (as hi and lo bytes); returns their scale and,
// through hi_sum, Σ hi. NaN or inf in the block: codes 0 and a NaN scale.
float quantize_activations16(const float* x, int8_t* hi, uint8_t* lo, int32_t* hi_sum, Isa isa);

// Whether the CPU has AVX-512 VNNI (the kAvx512 quantized kernels need it; without it they fall
// back to the AVX2 ones), and AVX-512 VBMI.
bool has_avx512_vnni();
bool has_avx512_vbmi();

// out[t·ldo + i] = row (r + i) of w times token t's prepared activations (at xp + t·ldx), for
// i < rows (1..4) and t < tokens. Each result is the same whatever `rows` and `tokens` are.
using QuantRowsFn = void (*)(const uint8_t* xp, int64_t ldx, int tokens, const ops::Matrix& w,
                             int64_t r, int rows, float* out, int64_t ldo);
// With `vbmi` (default: the CPU has AVX-512 VBMI), AVX-512's q4 kernel looks its levels up with
// one byte permute per nibble half and no masking; both versions are tested.
QuantRowsFn quant_rows_kernel(Isa isa, ops::WeightFormat format, bool vbmi = has_avx512_vbmi());

// Runs `iters` rounds of the int8 dot-product instruction the quantized kernels use, on 8
// independent accumulators, and returns a value that depends on them: ops_per_iter(isa)·iters
// integer operations (a multiply-add counts 2).
int32_t int8_dot_throughput_loop(Isa isa, int64_t iters);
int64_t int8_dot_ops_per_iter(Isa isa);

}  // namespace whale::cpu
