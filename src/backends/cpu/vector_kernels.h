// Inner loops compiled once per instruction set from one body; picked at run time.
#pragma once

#include <cstdint>

#include "backends/cpu/cpu_backend.h"

namespace whale::cpu {

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float*, const float*, float, int64_t);

DotFn dot_kernel(Isa isa);
AxpyFn axpy_kernel(Isa isa);

}  // namespace whale::cpu
