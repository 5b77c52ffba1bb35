// Inner loops compiled once per instruction set from one body; picked at run time.
#pragma once

#include <cstdint>

#include "backends/cpu/cpu_backend.h"

namespace whale::cpu {

using DotFn = float (*)(const float*, const float*, int64_t);
// Σ x[i]·bf16(w[i]): bf16 widened in registers, no converted copy of the row.
using DotBf16Fn = float (*)(const float*, const uint16_t*, int64_t);
using AxpyFn = void (*)(float*, const float*, float, int64_t);

DotFn dot_kernel(Isa isa);
DotBf16Fn dot_bf16_kernel(Isa isa);

// Runs `iters` rounds of 256 independent f32 multiply-adds in registers and returns a value
// that depends on them (so they are not optimised away): 512·iters FLOPs of pure FMA
// throughput, the ceiling of f32 matmul kernels on one core.
float fma_throughput_loop(Isa isa, int64_t iters);
AxpyFn axpy_kernel(Isa isa);

}  // namespace whale::cpu
