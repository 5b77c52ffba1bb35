// Inner loops compiled once per instruction set from one body; picked at run time.
#pragma once

#include <cstdint>

#include "backends/cpu/isa.h"

namespace whale::cpu {

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float*, const float*, float, int64_t);

DotFn dot_kernel(Isa isa);

// Up to four bf16 matrix rows times one f32 vector. The vector is first put in the kernel's
// order (prepare, once per product and token), so that the inner loop widens bf16 with a single
// shift or mask and needs no shuffles; rows are read once, with software prefetch ahead of the
// stream, which the hardware prefetcher alone does not keep full.
struct Bf16RowsKernel {
  // out[0, n) = x[0, n) in kernel order.
  void (*prepare)(const float* x, int64_t n, float* out);
  // out[r] = Σ_i x[i]·w[r·ld + i] for r < rows (1..4); xp as prepared.
  void (*dot_rows)(const float* xp, const uint16_t* w, int64_t ld, int rows, int64_t n, float* out);
};
Bf16RowsKernel bf16_rows_kernel(Isa isa);

// Reads n bytes (a multiple of 64, 64-byte aligned) and returns a value that depends on all of
// them: the memory read bandwidth probe of `whale bench`.
uint64_t read_bytes_loop(Isa isa, const void* p, int64_t n);

// Runs `iters` rounds of 256 independent f32 multiply-adds in registers and returns a value
// that depends on them (so they are not optimised away): 512·iters FLOPs of pure FMA
// throughput, the ceiling of f32 matmul kernels on one core.
float fma_throughput_loop(Isa isa, int64_t iters);
AxpyFn axpy_kernel(Isa isa);
// y[i] += alpha · bf16(w[i]) (w at any 2-byte alignment).
using AxpyBf16Fn = void (*)(float*, const uint16_t*, float, int64_t);
AxpyBf16Fn axpy_bf16_kernel(Isa isa);
// y[i] = silu(g[i]) · u[i] for i < n (y may be g).
using SwigluFn = void (*)(float* y, const float* g, const float* u, int64_t n);
SwigluFn swiglu_kernel(Isa isa);

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
};
using MultiQueryFn = void (*)(const MultiQueryPart&);
MultiQueryFn multi_query_kernel(Isa isa);

}  // namespace whale::cpu
