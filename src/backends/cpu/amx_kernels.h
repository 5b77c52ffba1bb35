// Products of weight matrices with many tokens on AMX-BF16 tiles (Sapphire Rapids and later):
// prefill's matmuls. bf16 weights are copied into tile order from the mapped checkpoint; each
// token's f32 activations are split into two bf16 parts (hi + lo, together within 2^-16 of the
// f32 value), so the products keep f32 accuracy at twice the tile work.
//
// Weights in whale's block formats (kQ8, kQ4) are expanded into tile order as bf16 (code ×
// block scale, rounded to nearest even) and multiplied with the hi part alone: each product is
// within about 2^-8 of Σ|w·x|, far inside the formats' own rounding, and the tiles do half the
// work. (Integer tiles would keep the codes exact, but each 32-column block's sums must then
// leave the tiles to be scaled: on synth-v3-1b's prefill these bf16 tiles are 15–23% (q8) and
// 26–35% (q4) faster than integer ones were, and integer tiles' int8 activations cost accuracy.)
#pragma once

#include <cstdint>
#include <vector>

#include "core/uninit_vector.h"
#include "ops/matrix.h"

namespace whale::cpu {

// Whether the CPU has AMX-BF16 and the kernel lets this process use the tile state.
bool amx_usable();

// The fewest tokens for which the tile path pays (a tile holds 16; measured on synth-v3-1b's
// expert shapes, 4 tokens padded to 16 on tiles beat the vector kernels).
constexpr int64_t kAmxMinTokens = 4;

// Activations of n tokens × k columns (k a multiple of 32) in the tile layout: for every block of
// 16 tokens and of 32 columns, a 16 × 16 grid of bf16 pairs (row p: columns 2p, 2p + 1 of each
// token), once for the hi parts and, `with_lo`, once for the lo parts. Tokens past n are zero.
struct AmxActivations {
  int64_t n = 0, k = 0;
  bool with_lo = true;  // whether lo is filled (and used): false for the block formats
  // [ceil(n / 16)][k / 32][16][16]: a token block's tiles in K order, one contiguous stream.
  // Grown, never cleared: amx_prepare writes every tile whole.
  UninitVector<uint32_t> hi, lo;
};
// Fills the tiles of tokens [t0, t1) (t0 a multiple of 16, t1 one too or n); `a` must be sized
// by amx_resize first. Split so that threads can share the work.
void amx_resize(AmxActivations* a, int64_t n, int64_t k, bool with_lo);
void amx_prepare(AmxActivations* a, const float* x, int64_t ldx, int64_t t0, int64_t t1);

// y[t, r] for weight rows [r0, r1) (r1 - r0 a multiple of 16) and every token, w in bf16 or a
// block format (with activations prepared without lo).
void amx_matmul_rows(const AmxActivations& a, const ops::Matrix& w, int64_t r0, int64_t r1,
                     float* y, int64_t ldy);

// Runs `iters` rounds of 8 tile products (16·16·32 multiply-adds each) on tiles in registers and
// returns a value that depends on them: 131,072·iters FLOPs (2 per multiply-add) of pure
// AMX-BF16 throughput.
float amx_bf16_throughput_loop(int64_t iters);

}  // namespace whale::cpu
