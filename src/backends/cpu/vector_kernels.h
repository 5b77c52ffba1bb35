// Inner loops compiled once per instruction set from one body; picked at run time.
#pragma once

#include <cstdint>

#include "backends/cpu/isa.h"

namespace whale::cpu {

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float*, const float*, float, int64_t);

DotFn dot_kernel(Isa isa);

// Up to four bf16 matrix rows times f32 vectors (tokens). The vectors are first put in the
// kernel's order (prepare, once per product and token), so that the inner loop widens bf16 with
// a single shift or mask and needs no shuffles; rows are read with software prefetch ahead of
// the stream, which the hardware prefetcher alone does not keep full, and widened once for a
// tile of tokens.
struct Bf16RowsKernel {
  // out[0, n) = x[0, n) in kernel order.
  void (*prepare)(const float* x, int64_t n, float* out);
  // out[t·ldo + r] = Σ_i x_t[i]·w[r·ld + i] for r < rows (1..4) and t < tokens, x_t at
  // xp + t·ldx as prepared. Each sum is the same whatever `rows` and `tokens` are.
  void (*dot_rows)(const float* xp, int64_t ldx, int tokens, const uint16_t* w, int64_t ld,
                   int rows, int64_t n, float* out, int64_t ldo);
};
Bf16RowsKernel bf16_rows_kernel(Isa isa);

// Reads n bytes (a multiple of 64, 64-byte aligned) and returns a value that depends on all of
// them: the memory read bandwidth probe of `whale bench`.
uint64_t read_bytes_loop(Isa isa, const void* p, int64_t n);

// Runs `iters` rounds of independent f32 multiply-adds in registers and returns a value that
// depends on them (so they are not optimised away): fma_flops_per_iter(isa)·iters FLOPs of pure
// FMA throughput, the ceiling of f32 matmul kernels on one core.
float fma_throughput_loop(Isa isa, int64_t iters);
int64_t fma_flops_per_iter(Isa isa);
AxpyFn axpy_kernel(Isa isa);
// y[i] += alpha · bf16(w[i]) (w at any 2-byte alignment).
using AxpyBf16Fn = void (*)(float*, const uint16_t*, float, int64_t);
AxpyBf16Fn axpy_bf16_kernel(Isa isa);
// y[b·32 + i] += alpha · scale_b · codes[b·32 + i] for `blocks` blocks of 32 q8 codes, scale_b
// the f16 at scales + 2b (any alignment): a row of a q8 matrix's transposed product.
using AxpyQ8Fn = void (*)(float* y, const int8_t* codes, const uint8_t* scales, float alpha,
                          int64_t blocks);
AxpyQ8Fn axpy_q8_kernel(Isa isa);
// y[i] = silu(g[i]) · u[i] for i < n (y may be g).
using SwigluFn = void (*)(float* y, const float* g, const float* u, int64_t n);
SwigluFn swiglu_kernel(Isa isa);

}  // namespace whale::cpu
