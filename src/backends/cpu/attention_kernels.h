// Attention's inner loops, compiled once per instruction set from one body and picked at run
// time: prefill's blocks of queries over transposed keys, and decode's multi-query form over
// the cache rows.
#pragma once

#include <cstdint>

#include "backends/cpu/isa.h"

namespace whale::cpu {

// Keys of one kv head in blocks of 16, transposed: block b holds [dk][16] (key b·16 + j in lane
// j; keys past n_kv are zero), so that scores come out 16 keys to a vector with no reductions.
void transpose_keys(const float* k, int64_t k_row, int64_t n_kv, int64_t dk, float* out, Isa isa);

// Causal attention of up to kMaxQueries queries that share a kv head (one sequence):
//   out[q] = Σ_s softmax_s(scale · q·k_s) v_s over keys s < visible[q].
struct AttentionBlock {
  static constexpr int kMaxQueries = 8;
  int n_q = 0;
  const float* q[kMaxQueries] = {};
  float* out[kMaxQueries] = {};
  int64_t visible[kMaxQueries] = {};
  const float* keys_t = nullptr;  // transpose_keys output of this head's kv head
  const float* v = nullptr;       // value s at v + s·v_row
  int64_t v_row = 0;
  int64_t dk = 0, dv = 0;
  float scale = 1.0f;
  // Scratch: kMaxQueries × round_up(max visible, 16) + dv floats.
  float* scores = nullptr;
};
using AttentionBlockFn = void (*)(const AttentionBlock&);
AttentionBlockFn attention_block_kernel(Isa isa);

// Multi-query attention (one kv head shared by many query heads, absorbed MLA's form) of up to
// kHeads heads of one query over keys [s0, s1), read straight from the cache rows: a score per
// key is one broadcast multiply-add per dimension for all heads at once, so keys need no
// transposing. Returns the unnormalised part, which parts over other key ranges combine with
// (flash-decoding): m[h] = max score, l[h] = Σ e^(score - m), o_t[c][h] = Σ e^(score - m)·v[c].
struct MultiQueryPart {
  static constexpr int kHeads = 16;
  const float* q_t = nullptr;  // [dk][kHeads]: the heads' queries transposed, times the scale
  const float* k = nullptr;    // key s at k + s·k_row
  const float* v = nullptr;    // value s at v + s·v_row
  int64_t k_row = 0, v_row = 0;
  int64_t dk = 0, dv = 0;
  int64_t s0 = 0, s1 = 0;   // s1 > s0
  float* scores = nullptr;  // scratch [s1 - s0][kHeads]
  float* m = nullptr;       // [kHeads]
  float* l = nullptr;       // [kHeads]
  float* o_t = nullptr;     // [dv][kHeads]
  // A bf16 cache instead of k and v (the bf16 kernels): key s at k16 + s·k_row, value s at
  // v16 + s·v_row, and multi_query_bf16_scratch(dk, dv, s1 - s0) floats of scratch in wide.
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
  float* wide = nullptr;
};
using MultiQueryFn = void (*)(const MultiQueryPart&);
MultiQueryFn multi_query_kernel(Isa isa);
// Folds the part (m2, l2, o2) of another key range into `into`'s, as flash-decoding combines
// them.
void merge_multi_query_part(const MultiQueryPart& into, const float* m2, const float* l2,
                            const float* o2);

// The same over a bf16 cache. With AVX512-BF16, queries and weights are rounded to bf16 too
// and every dot product takes pairs (twice the f32 multiply-adds per instruction); elsewhere
// the keys are widened to f32 in chunks that stay in L1, and the f32 kernel runs over them.
MultiQueryFn multi_query_bf16_kernel(Isa isa);
// Whether that kernel rounds queries and weights to bf16 (the AVX512-BF16 one).
bool multi_query_bf16_rounds(Isa isa);
int64_t multi_query_bf16_scratch(int64_t dk, int64_t dv, int64_t n);

}  // namespace whale::cpu
