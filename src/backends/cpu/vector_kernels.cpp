#include "backends/cpu/vector_kernels.h"

#include <bit>

namespace whale::cpu {
namespace {

// 32 independent partial sums let the compiler keep several vector FMAs in flight.
#define WHALE_DOT_BODY                                            \
  {                                                               \
    float acc[32] = {};                                           \
    int64_t i = 0;                                                \
    for (; i + 32 <= n; i += 32) {                                \
      for (int j = 0; j < 32; ++j) acc[j] += a[i + j] * b[i + j]; \
    }                                                             \
    float s = 0;                                                  \
    for (int j = 0; j < 32; ++j) s += acc[j];                     \
    for (; i < n; ++i) s += a[i] * b[i];                          \
    return s;                                                     \
  }

// bf16 is the top half of an f32: widen by a 16-bit shift (vectorises to shifts, no lookups).
#define WHALE_DOT_BF16_BODY                                                    \
  {                                                                            \
    float acc[32] = {};                                                        \
    int64_t i = 0;                                                             \
    for (; i + 32 <= n; i += 32) {                                             \
      for (int j = 0; j < 32; ++j) {                                           \
        acc[j] += a[i + j] * std::bit_cast<float>(uint32_t{b[i + j]} << 16);   \
      }                                                                        \
    }                                                                          \
    float s = 0;                                                               \
    for (int j = 0; j < 32; ++j) s += acc[j];                                  \
    for (; i < n; ++i) s += a[i] * std::bit_cast<float>(uint32_t{b[i]} << 16); \
    return s;                                                                  \
  }

#define WHALE_AXPY_BODY                                   \
  {                                                       \
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i]; \
  }

// clang-format off
float dot_portable(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
float dot_bf16_portable(const float* a, const uint16_t* b, int64_t n) WHALE_DOT_BF16_BODY
void axpy_portable(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
float dot_avx2(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
__attribute__((target("avx2,fma")))
float dot_bf16_avx2(const float* a, const uint16_t* b, int64_t n) WHALE_DOT_BF16_BODY
__attribute__((target("avx2,fma")))
void axpy_avx2(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY
__attribute__((target("avx512f,fma")))
float dot_avx512(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
__attribute__((target("avx512f,fma")))
float dot_bf16_avx512(const float* a, const uint16_t* b, int64_t n) WHALE_DOT_BF16_BODY
__attribute__((target("avx512f,fma")))
void axpy_avx512(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY
#endif
// clang-format on

// 16 accumulators of 16 lanes: enough independent chains to keep both FMA ports busy.
#define WHALE_FMA_BODY                                       \
  {                                                          \
    float acc[256];                                          \
    for (int j = 0; j < 256; ++j) acc[j] = 1.0f + j * 1e-3f; \
    const float a = 0.999999f, b = 1e-7f;                    \
    for (int64_t i = 0; i < iters; ++i) {                    \
      for (int j = 0; j < 256; ++j) acc[j] = acc[j] * a + b; \
    }                                                        \
    float s = 0;                                             \
    for (int j = 0; j < 256; ++j) s += acc[j];               \
    return s;                                                \
  }

    float fma_portable(int64_t iters) WHALE_FMA_BODY
#if defined(__x86_64__)
    __attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) WHALE_FMA_BODY
    __attribute__((target("avx512f,fma"))) float fma_avx512(int64_t iters) WHALE_FMA_BODY
#endif

}  // namespace

float fma_throughput_loop(Isa isa, int64_t iters) {
#if defined(__x86_64__)
  if (isa == Isa::kAvx512) return fma_avx512(iters);
  if (isa == Isa::kAvx2) return fma_avx2(iters);
#endif
  return fma_portable(iters);
}

DotBf16Fn dot_bf16_kernel(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::kAvx512) return dot_bf16_avx512;
  if (isa == Isa::kAvx2) return dot_bf16_avx2;
#endif
  return dot_bf16_portable;
}

DotFn dot_kernel(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::kAvx512) return dot_avx512;
  if (isa == Isa::kAvx2) return dot_avx2;
#endif
  return dot_portable;
}

AxpyFn axpy_kernel(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::kAvx512) return axpy_avx512;
  if (isa == Isa::kAvx2) return axpy_avx2;
#endif
  return axpy_portable;
}

}  // namespace whale::cpu
