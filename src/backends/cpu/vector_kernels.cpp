#include "backends/cpu/vector_kernels.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <utility>

#include "backends/cpu/exp_kernels.h"
#include "backends/cpu/simd.h"
#include "core/dtype.h"

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

// y += alpha · bf16(w), widened in registers.
#define WHALE_AXPY_BF16_BODY                                                            \
  {                                                                                     \
    for (int64_t i = 0; i < n; ++i)                                                     \
      y[i] += alpha * std::bit_cast<float>(uint32_t{w[i]} << 16);                       \
  }

// The scale's f16 read with memcpy (a file may place it at any offset).
#define WHALE_AXPY_Q8_BODY                                                                     \
  {                                                                                            \
    for (int64_t b = 0; b < blocks; ++b) {                                                     \
      uint16_t h;                                                                              \
      std::memcpy(&h, scales + 2 * b, 2);                                                      \
      const float a = alpha * f16_to_f32(h);                                                   \
      for (int i = 0; i < 32; ++i) y[b * 32 + i] += a * static_cast<float>(codes[b * 32 + i]); \
    }                                                                                          \
  }

#define WHALE_AXPY_BODY                                   \
  {                                                       \
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i]; \
  }

// clang-format off
float dot_portable(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
void axpy_portable(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY
void axpy_bf16_portable(float* y, const uint16_t* w, float alpha, int64_t n) WHALE_AXPY_BF16_BODY
void axpy_q8_portable(float* y, const int8_t* codes, const uint8_t* scales, float alpha,
                      int64_t blocks) WHALE_AXPY_Q8_BODY

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
float dot_avx2(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
__attribute__((target("avx2,fma")))
void axpy_avx2(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY
__attribute__((target("avx2,fma")))
void axpy_bf16_avx2(float* y, const uint16_t* w, float alpha, int64_t n) WHALE_AXPY_BF16_BODY
__attribute__((target("avx512f,fma")))
float dot_avx512(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
__attribute__((target("avx512f,fma")))
void axpy_avx512(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY
__attribute__((target("avx512f,fma")))
void axpy_bf16_avx512(float* y, const uint16_t* w, float alpha, int64_t n) WHALE_AXPY_BF16_BODY
// In intrinsics, the scale widened by F16C: left to the compiler, this took 25.9 ms for the
// lab's 24,094 q8 matrices of 64 × 256 against 20.8-23.1 (16.2 against 18.2-20.1 GB/s; AMD
// Zen 4, 2 threads).
// Keeping y in registers over two or four rows at a time was slower (22.2 and 32.5 ms for q8;
// for bf16, 22.2 and 24.9 against 14.6 one row at a time): the rows' streams interleave.
#define WHALE_AXPY_Q8_VEC(TARGET, NAME, LANES, SET1, LOADU, STOREU, FMADD, CODES)        \
  TARGET void NAME(float* y, const int8_t* codes, const uint8_t* scales, float alpha,    \
                   int64_t blocks) {                                                     \
    for (int64_t b = 0; b < blocks; ++b) {                                               \
      uint16_t h;                                                                        \
      std::memcpy(&h, scales + 2 * b, 2);                                                \
      const auto a = SET1(alpha * _cvtsh_ss(h));                                         \
      for (int i = 0; i < 32; i += LANES) {                                              \
        float* yb = y + b * 32 + i;                                                      \
        STOREU(yb, FMADD(CODES(codes + b * 32 + i), a, LOADU(yb)));                      \
      }                                                                                  \
    }                                                                                    \
  }
#define WHALE_CODES8(p) \
  _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))
#define WHALE_CODES16(p) \
  _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))
WHALE_AXPY_Q8_VEC(__attribute__((target("avx2,fma,f16c"))), axpy_q8_avx2, 8, _mm256_set1_ps,
                  _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps, WHALE_CODES8)
WHALE_AXPY_Q8_VEC(__attribute__((target("avx512f,fma,f16c"))), axpy_q8_avx512, 16,
                  _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps,
                  WHALE_CODES16)
#undef WHALE_CODES8
#undef WHALE_CODES16
#undef WHALE_AXPY_Q8_VEC
#endif

// Independent multiply-add chains, as many as the registers hold with room for the constants
// (more, and the compiler keeps them on the stack, and the loop times the stores instead): 16 of
// 16 lanes for AVX-512 (32 registers), 12 of 8 for AVX2 and 12 of 4 for SSE2 (16 registers).
// Enough to keep two FMA ports busy through the multiply-add's latency.
constexpr int kFmaPortable = 48, kFmaAvx2 = 96, kFmaAvx512 = 256;
// clang-format on

template <int N>
inline __attribute__((always_inline)) float fma_chains(int64_t iters) {
  float acc[N];
  for (int j = 0; j < N; ++j) acc[j] = 1.0f + static_cast<float>(j) * 1e-3f;
  const float a = 0.999999f, b = 1e-7f;
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < N; ++j) acc[j] = acc[j] * a + b;
  }
  float s = 0;
  for (int j = 0; j < N; ++j) s += acc[j];
  return s;
}
float fma_portable(int64_t iters) { return fma_chains<kFmaPortable>(iters); }
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) {
  return fma_chains<kFmaAvx2>(iters);
}
__attribute__((target("avx512f,fma"))) float fma_avx512(int64_t iters) {
  return fma_chains<kFmaAvx512>(iters);
}
#endif

// ---- bf16 rows ------------------------------------------------------------------------------

// Elements ahead of the current position that the bf16 kernels prefetch (16 KB; the block
// kernels prefetch as far). The kernels walk four rows at a time, so the distance must reach
// past the four: on V3's widths (7,168 columns, 14 KB bf16 rows) 8 KB fell inside them and
// left products of expert-shaped matrices at 25.0 GB/s (bf16), 25.3 (q8) and 20.2 (q4) where
// 16 KB gives 28.4, 25.0 and 23.4, 2 threads, the probe's loop 27–30; on synth-v3-1b's
// 1,024 columns 4–16 KB measured alike. With no prefetch at all they stream at ~19.
// The AVX-512 kernels prefetch into L2 (T1), not L1: an L1 prefetch holds one of the core's
// few line-fill buffers while the line is in flight (lab, alternating: bf16 28.1–28.8 ->
// 30.4–32.9 GB/s, q8 25.0–27.3 -> 28.4–29.6, q4 22.3–24.8 -> 24.1–24.8).
constexpr int64_t kBf16Prefetch = 8192;

void prepare_bf16_portable(const float* x, int64_t n, float* out) { std::copy_n(x, n, out); }

void dot_bf16_rows_portable(const float* xp, int64_t ldx, int tokens, const uint16_t* w, int64_t ld,
                            int rows, int64_t n, float* out, int64_t ldo) {
  for (int t = 0; t < tokens; ++t) {
    const float* x = xp + t * ldx;
    for (int r = 0; r < rows; ++r) {
      const uint16_t* b = w + r * ld;
      float acc[16] = {};
      int64_t i = 0;
      for (; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * bf16_to_f32(b[i + j]);
      }
      float s = 0;
      for (int j = 0; j < 16; ++j) s += acc[j];
      for (; i < n; ++i) s += x[i] * bf16_to_f32(b[i]);
      out[t * ldo + r] = s;
    }
  }
}

// In blocks of 2·L elements (L lanes): the even elements first, then the odd ones, which is
// where a 32-bit lane of bf16 pairs puts them (the low half is the even element).
template <int L>
void prepare_pairs(const float* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    for (int j = 0; j < L; ++j) {
      out[i + j] = x[i + 2 * j];
      out[i + L + j] = x[i + 2 * j + 1];
    }
  }
  std::copy(x + i, x + n, out + i);
}

#if defined(__x86_64__)
void prepare_bf16_avx512(const float* x, int64_t n, float* out) { prepare_pairs<16>(x, n, out); }
void prepare_bf16_avx2(const float* x, int64_t n, float* out) { prepare_pairs<8>(x, n, out); }

// R rows times T tokens, one accumulator per pair: the pair's multiply-adds run in the same
// order whatever R and T are (even then odd elements of each 32-column step, one reduction),
// so a product's result never depends on the rows or tokens beside it. A tile of rows is
// widened once per step and used for every token of the tile: prefill, with four tokens to a
// tile, does a quarter of the loads and widenings per multiply-add that one token at a time
// did (lab, AMD Zen 4 without AMX, 2 threads: expert shapes 82-95 -> 144-190 GFLOP/s, dense
// 87-113 -> 181-206, of a 235 FMA peak; bf16 prefill of synth-v3-1b 215 -> 432-460 tokens/s).
template <int R, int T>
__attribute__((target("avx512f,fma"))) void bf16_tile_avx512(const float* xp, int64_t ldx,
                                                             const uint16_t* w, int64_t ld,
                                                             int64_t n, float* out, int64_t ldo) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 xe[T], xo[T];
    for (int t = 0; t < T; ++t) {
      xe[t] = _mm512_loadu_ps(xp + t * ldx + i);
      xo[t] = _mm512_loadu_ps(xp + t * ldx + i + 16);
    }
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * ld + i + kBf16Prefetch), _MM_HINT_T1);
      const __m512i v = _mm512_loadu_si512(w + r * ld + i);
      const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, high));
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm512_fmadd_ps(xe[t], we, acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(xo[t], wo, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[r][t]);
      for (int64_t j = i; j < n; ++j) s += xp[t * ldx + j] * bf16_to_f32(w[r * ld + j]);
      out[t * ldo + r] = s;
    }
  }
}

// The same in 8-lane steps; 16 registers hold four rows of two tokens.
template <int R, int T>
__attribute__((target("avx2,fma"))) void bf16_tile_avx2(const float* xp, int64_t ldx,
                                                        const uint16_t* w, int64_t ld, int64_t n,
                                                        float* out, int64_t ldo) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 xe[T], xo[T];
    for (int t = 0; t < T; ++t) {
      xe[t] = _mm256_loadu_ps(xp + t * ldx + i);
      xo[t] = _mm256_loadu_ps(xp + t * ldx + i + 8);
    }
    for (int r = 0; r < R; ++r) {
      if (i % 32 == 0)
        _mm_prefetch(reinterpret_cast<const char*>(w + r * ld + i + kBf16Prefetch), _MM_HINT_T1);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ld + i));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm256_fmadd_ps(xe[t], we, acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(xo[t], wo, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      const __m256 sum = acc[r][t];
      __m128 q = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
      q = _mm_add_ps(q, _mm_movehl_ps(q, q));
      q = _mm_add_ss(q, _mm_movehdup_ps(q));
      float s = _mm_cvtss_f32(q);
      for (int64_t j = i; j < n; ++j) s += xp[t * ldx + j] * bf16_to_f32(w[r * ld + j]);
      out[t * ldo + r] = s;
    }
  }
}

#define WHALE_BF16_ROWS_DISPATCH(kernel, T_MAX)                                               \
  template <int R, int T>                                                                     \
  struct Bf16Tile_##kernel {                                                                  \
    static void run(const float* xp, int64_t ldx, const uint16_t* w, int64_t ld, int64_t n,   \
                    float* out, int64_t ldo) {                                                \
      bf16_tile_##kernel<R, T>(xp, ldx, w, ld, n, out, ldo);                                  \
    }                                                                                         \
  };                                                                                          \
  void dot_bf16_rows_##kernel(const float* xp, int64_t ldx, int tokens, const uint16_t* w,    \
                              int64_t ld, int rows, int64_t n, float* out, int64_t ldo) {     \
    static constexpr auto table = tile_table<Bf16Tile_##kernel, T_MAX>();                     \
    for (int t = 0; t < tokens; t += T_MAX) {                                                 \
      const int count = std::min(T_MAX, tokens - t);                                          \
      table[static_cast<size_t>((rows - 1) * T_MAX + count - 1)](xp + t * ldx, ldx, w, ld, n, \
                                                                 out + t * ldo, ldo);         \
    }                                                                                         \
  }
WHALE_BF16_ROWS_DISPATCH(avx512, 4)
WHALE_BF16_ROWS_DISPATCH(avx2, 2)
#undef WHALE_BF16_ROWS_DISPATCH

__attribute__((target("avx512f"))) uint64_t read_avx512(const void* p, int64_t n) {
  const auto* b = static_cast<const char*>(p);
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i + 256 <= n; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(b + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(b + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(b + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(b + i + 192));
  }
  return static_cast<uint64_t>(
      _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3))));
}

__attribute__((target("avx2"))) uint64_t read_avx2(const void* p, int64_t n) {
  const auto* b = static_cast<const char*>(p);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

// ---- SwiGLU ----------------------------------------------------------------------------------

// y[i] = silu(g[i]) · u[i], with silu(g) = g·σ(g) and σ from e^-|g| (never overflows). The
// vector versions (below) do the same arithmetic in 8 or 16 lanes.
inline float swiglu_one(float g, float u) {
  const float e = exp_nonpositive(-std::fabs(g));
  const float sigma = (g >= 0 ? 1.0f : e) / (1.0f + e);
  return g * sigma * u;
}
void swiglu_portable(float* y, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = swiglu_one(g[i], u[i]);
}

#if defined(__x86_64__)
// swiglu_one in 16 lanes (the compiler leaves the scalar loop unvectorised: the branch and the
// exponent's integer arithmetic stop it).
__attribute__((target("avx512f,fma"))) void swiglu_avx512(float* y, const float* g, const float* u,
                                                          int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 gv = _mm512_loadu_ps(g + i);
    const __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(gv)));
    const __mmask16 positive = _mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 sigma =
        _mm512_div_ps(_mm512_mask_blend_ps(positive, e, one), _mm512_add_ps(one, e));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(gv, sigma), _mm512_loadu_ps(u + i)));
  }
  for (; i < n; ++i) y[i] = swiglu_one(g[i], u[i]);
}

// swiglu_one in 8 lanes.
__attribute__((target("avx2,fma"))) void swiglu_avx2(float* y, const float* g, const float* u,
                                                     int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp_nonpositive_avx2(_mm256_or_ps(gv, sign));  // −|g|
    const __m256 positive = _mm256_cmp_ps(gv, zero, _CMP_GE_OQ);
    const __m256 sigma = _mm256_div_ps(_mm256_blendv_ps(e, one, positive), _mm256_add_ps(one, e));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(gv, sigma), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) y[i] = swiglu_one(g[i], u[i]);
}
#endif

}  // namespace

int64_t fma_flops_per_iter(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return 2 * kFmaAvx512;
  if (isa == Isa::kAvx2) return 2 * kFmaAvx2;
#endif
  (void)isa;
  return 2 * kFmaPortable;
}

float fma_throughput_loop(Isa isa, int64_t iters) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return fma_avx512(iters);
  if (isa == Isa::kAvx2) return fma_avx2(iters);
#endif
  return fma_portable(iters);
}


SwigluFn swiglu_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return swiglu_avx512;
  if (isa == Isa::kAvx2) return swiglu_avx2;
#endif
  return swiglu_portable;
}


Bf16RowsKernel bf16_rows_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return {prepare_bf16_avx512, dot_bf16_rows_avx512};
  if (isa == Isa::kAvx2) return {prepare_bf16_avx2, dot_bf16_rows_avx2};
#endif
  return {prepare_bf16_portable, dot_bf16_rows_portable};
}

uint64_t read_bytes_loop(Isa isa, const void* p, int64_t n) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return read_avx512(p, n);
  if (isa == Isa::kAvx2) return read_avx2(p, n);
#endif
  uint64_t acc[8] = {};
  const auto* w = static_cast<const uint64_t*>(p);
  for (int64_t i = 0; i < n / 8; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += w[i + j];
  }
  uint64_t s = 0;
  for (uint64_t a : acc) s += a;
  return s;
}

DotFn dot_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return dot_avx512;
  if (isa == Isa::kAvx2) return dot_avx2;
#endif
  return dot_portable;
}

AxpyBf16Fn axpy_bf16_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return axpy_bf16_avx512;
  if (isa == Isa::kAvx2) return axpy_bf16_avx2;
#endif
  return axpy_bf16_portable;
}

AxpyQ8Fn axpy_q8_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return axpy_q8_avx512;
  if (isa == Isa::kAvx2) return axpy_q8_avx2;
#endif
  return axpy_q8_portable;
}

AxpyFn axpy_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return axpy_avx512;
  if (isa == Isa::kAvx2) return axpy_avx2;
#endif
  return axpy_portable;
}

}  // namespace whale::cpu
