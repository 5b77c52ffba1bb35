#include "backends/cpu/vector_kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>

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

#define WHALE_AXPY_BODY                                   \
  {                                                       \
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i]; \
  }

// clang-format off
float dot_portable(const float* a, const float* b, int64_t n) WHALE_DOT_BODY
void axpy_portable(float* y, const float* x, float alpha, int64_t n) WHALE_AXPY_BODY
void axpy_bf16_portable(float* y, const uint16_t* w, float alpha, int64_t n) WHALE_AXPY_BF16_BODY

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


// ---- bf16 rows -------------------------------------------------------------------------------

// Elements ahead of the current position that the bf16 kernels prefetch (16 KB; the block
// kernels prefetch as far). The kernels walk four rows at a time, so the distance must reach
// past the four: on V3's widths (7,168 columns, 14 KB bf16 rows) 8 KB fell inside them and
// left products of expert-shaped matrices at 25.0 GB/s (bf16), 25.3 (q8) and 20.2 (q4) where
// 16 KB gives 28.4, 25.0 and 23.4, 2 threads, the probe's loop 27–30; on synth-v3-1b's
// 1,024 columns 4–16 KB measured alike. With no prefetch at all they stream at ~19.
constexpr int64_t kBf16Prefetch = 8192;


void prepare_bf16_portable(const float* x, int64_t n, float* out) { std::copy_n(x, n, out); }

void dot_bf16_rows_portable(const float* xp, const uint16_t* w, int64_t ld, int rows, int64_t n,
                            float* out) {
  for (int r = 0; r < rows; ++r) {
    const uint16_t* b = w + r * ld;
    float acc[16] = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      for (int j = 0; j < 16; ++j) acc[j] += xp[i + j] * bf16_to_f32(b[i + j]);
    }
    float s = 0;
    for (int j = 0; j < 16; ++j) s += acc[j];
    for (; i < n; ++i) s += xp[i] * bf16_to_f32(b[i]);
    out[r] = s;
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

template <int R>
__attribute__((target("avx512f,fma"))) void bf16_rows_avx512(const float* xp, const uint16_t* w,
                                                             int64_t ld, int64_t n, float* out) {
  __m512 even[R], odd[R];
  for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 xe = _mm512_loadu_ps(xp + i), xo = _mm512_loadu_ps(xp + i + 16);
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * ld + i + kBf16Prefetch), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(w + r * ld + i);
      even[r] = _mm512_fmadd_ps(xe, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), even[r]);
      odd[r] = _mm512_fmadd_ps(xo, _mm512_castsi512_ps(_mm512_and_si512(v, high)), odd[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r]));
    for (int64_t j = i; j < n; ++j) s += xp[j] * bf16_to_f32(w[r * ld + j]);
    out[r] = s;
  }
}

template <int R>
__attribute__((target("avx2,fma"))) void bf16_rows_avx2(const float* xp, const uint16_t* w,
                                                        int64_t ld, int64_t n, float* out) {
  __m256 even[R], odd[R];
  for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 xe = _mm256_loadu_ps(xp + i), xo = _mm256_loadu_ps(xp + i + 8);
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * ld + i + kBf16Prefetch), _MM_HINT_T0);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ld + i));
      even[r] = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), even[r]);
      odd[r] = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(v, high)), odd[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256 sum = _mm256_add_ps(even[r], odd[r]);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    float s = _mm_cvtss_f32(q);
    for (int64_t j = i; j < n; ++j) s += xp[j] * bf16_to_f32(w[r * ld + j]);
    out[r] = s;
  }
}

#define WHALE_BF16_ROWS_DISPATCH(kernel)                                                       \
  void dot_bf16_rows_##kernel(const float* xp, const uint16_t* w, int64_t ld, int rows,        \
                              int64_t n, float* out) {                                         \
    switch (rows) {                                                                            \
      case 4:                                                                                  \
        return bf16_rows_##kernel<4>(xp, w, ld, n, out);                                       \
      case 3:                                                                                  \
        return bf16_rows_##kernel<3>(xp, w, ld, n, out);                                       \
      case 2:                                                                                  \
        return bf16_rows_##kernel<2>(xp, w, ld, n, out);                                       \
      default:                                                                                 \
        return bf16_rows_##kernel<1>(xp, w, ld, n, out);                                       \
    }                                                                                          \
  }
WHALE_BF16_ROWS_DISPATCH(avx512)
WHALE_BF16_ROWS_DISPATCH(avx2)
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


// ---- attention --------------------------------------------------------------------------------

// 2^f on [0, 1), highest power first.
constexpr float kExp2Poly[7] = {1.535336188319500e-4f, 1.339887440266574e-3f,
                                9.618437357674640e-3f, 5.550332471162809e-2f,
                                2.402264791363012e-1f, 6.931472028550421e-1f, 1.0f};

// e^x for x ≤ 0 (scores less their maximum), relative error about 2e-7: 2^(x·log2 e) split into
// an integer power, set in the exponent bits, and a degree-6 polynomial for the fraction.
// Written in plain arithmetic so that the compiler vectorises it for each instruction set.
inline __attribute__((always_inline)) float exp_nonpositive(float x) {
  // Below 2^-126 the result would leave the normal range: clamp there (e^-87, as good as 0).
  const float t = std::max(x * 1.44269504088896341f, -126.0f);
  const float i = std::floor(t);
  const float f = t - i;  // [0, 1)
  float p = kExp2Poly[0];
  for (int c = 1; c < 7; ++c) p = p * f + kExp2Poly[c];
  const auto bits = std::bit_cast<uint32_t>(p) + (static_cast<uint32_t>(static_cast<int32_t>(i)) << 23);
  return std::bit_cast<float>(bits);
}

// The pieces below are plain loops over fixed-size arrays, always inlined into the per-ISA
// kernels, where the compiler keeps the arrays in vector registers of that ISA.
#define WHALE_INLINE inline __attribute__((always_inline))

constexpr int kQ = AttentionBlock::kMaxQueries;

// scores[q][j] = scale · q·k_j for the 16 keys of one transposed block, kQ queries at once
// (each key vector is loaded once for all of them).
WHALE_INLINE void score_block(const float* const* q, const float* kt, int64_t dk, float scale,
                              float* const* out) {
  // Even and odd dimensions in separate accumulators: independent chains keep both FMA units
  // busy.
  float acc[2][kQ][16] = {};
  int64_t d = 0;
  for (; d + 2 <= dk; d += 2) {
    for (int e = 0; e < 2; ++e) {
      for (int i = 0; i < kQ; ++i) {
        const float qd = q[i][d + e];
        for (int j = 0; j < 16; ++j) acc[e][i][j] += qd * kt[(d + e) * 16 + j];
      }
    }
  }
  for (; d < dk; ++d) {
    for (int i = 0; i < kQ; ++i) {
      const float qd = q[i][d];
      for (int j = 0; j < 16; ++j) acc[0][i][j] += qd * kt[d * 16 + j];
    }
  }
  for (int i = 0; i < kQ; ++i) {
    for (int j = 0; j < 16; ++j) out[i][j] = (acc[0][i][j] + acc[1][i][j]) * scale;
  }
}

// o[q][at, at + W) = Σ_j p[q][j] · v_j[at, at + W) over keys j < n, kQ queries at once.
template <int W>
WHALE_INLINE void weigh_values(const float* const* p, int64_t n, const float* v, int64_t v_row,
                               float* const* o, int64_t at) {
  float acc[kQ][W] = {};
  for (int64_t j = 0; j < n; ++j) {
    const float* vr = v + j * v_row + at;
    for (int i = 0; i < kQ; ++i) {
      const float pj = p[i][j];
      for (int c = 0; c < W; ++c) acc[i][c] += pj * vr[c];
    }
  }
  for (int i = 0; i < kQ; ++i) {
    for (int c = 0; c < W; ++c) o[i][at + c] = acc[i][c];
  }
}

// Softmax of s[0, n) in place, and zero for s[n, width).
WHALE_INLINE void softmax_row(float* s, int64_t n, int64_t width) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = exp_nonpositive(s[j] - m);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  for (int64_t j = n; j < width; ++j) s[j] = 0.0f;
}

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

// A block of fewer than kQ queries runs as kQ: the missing ones repeat the first query and
// write into scratch rows that are thrown away.
using ScoreBlockFn = void (*)(const float* const*, const float*, int64_t, float, float* const*);

using SoftmaxRowFn = void (*)(float*, int64_t, int64_t);
void softmax_row_generic(float* s, int64_t n, int64_t width) { softmax_row(s, n, width); }

// Scores of two consecutive key blocks at once (kt, and kt + dk · 16): where given, the body
// takes the blocks in pairs.
using ScorePairFn = void (*)(const float* const*, const float*, int64_t, float, float* const*,
                             float* const*);

template <ScoreBlockFn Score, SoftmaxRowFn Softmax = softmax_row_generic,
          ScorePairFn ScorePair = nullptr>
WHALE_INLINE void attention_block_body(const AttentionBlock& b) {
  int64_t most = 0;
  for (int i = 0; i < b.n_q; ++i) most = std::max(most, b.visible[i]);
  const int64_t blocks = (most + 15) / 16, width = blocks * 16;
  const float* q[kQ];
  float* rows[kQ];
  float* out[kQ];
  float* spare = b.scores + kQ * width;  // [dv] for the outputs of padding queries
  for (int i = 0; i < kQ; ++i) {
    const bool real = i < b.n_q;
    q[i] = b.q[real ? i : 0];
    rows[i] = b.scores + i * width;
    out[i] = real ? b.out[i] : spare;
  }
  int64_t blk = 0;
  if constexpr (ScorePair != nullptr) {
    for (; blk + 2 <= blocks; blk += 2) {
      float *at[kQ], *next[kQ];
      for (int i = 0; i < kQ; ++i) at[i] = rows[i] + blk * 16, next[i] = at[i] + 16;
      ScorePair(q, b.keys_t + blk * b.dk * 16, b.dk, b.scale, at, next);
    }
  }
  for (; blk < blocks; ++blk) {
    float* at[kQ];
    for (int i = 0; i < kQ; ++i) at[i] = rows[i] + blk * 16;
    Score(q, b.keys_t + blk * b.dk * 16, b.dk, b.scale, at);
  }
  for (int i = 0; i < kQ; ++i) Softmax(rows[i], i < b.n_q ? b.visible[i] : 0, width);
  const float* p[kQ];
  for (int i = 0; i < kQ; ++i) p[i] = rows[i];
  // kQ · 32 accumulators: 16 vector registers on AVX-512.
  int64_t c = 0;
  for (; c + 32 <= b.dv; c += 32) weigh_values<32>(p, most, b.v, b.v_row, out, c);
  for (; c + 16 <= b.dv; c += 16) weigh_values<16>(p, most, b.v, b.v_row, out, c);
  for (; c < b.dv; ++c) weigh_values<1>(p, most, b.v, b.v_row, out, c);
}

void score_block_generic(const float* const* q, const float* kt, int64_t dk, float scale,
                         float* const* out) {
  score_block(q, kt, dk, scale, out);
}

void attention_portable(const AttentionBlock& b) { attention_block_body<score_block_generic>(b); }

// ---- multi-query attention ---------------------------------------------------------------------

constexpr int kMqHeads = MultiQueryPart::kHeads;

// Scores of keys [s, s + R): acc[j][h] = Σ_d k[s + j][d] · q_t[d][h].
template <int R>
WHALE_INLINE void mq_scores(const MultiQueryPart& p, int64_t s, float* out) {
  float acc[R][kMqHeads] = {};
  for (int64_t d = 0; d < p.dk; ++d) {
    const float* qd = p.q_t + d * kMqHeads;
    for (int j = 0; j < R; ++j) {
      const float kd = p.k[(s + j) * p.k_row + d];
      for (int h = 0; h < kMqHeads; ++h) acc[j][h] += kd * qd[h];
    }
  }
  for (int j = 0; j < R; ++j)
    for (int h = 0; h < kMqHeads; ++h) out[j * kMqHeads + h] = acc[j][h];
}

// o_t[c, c + W)[h] = Σ_s w[s][h] · v[s][c + ..] over the part's keys.
template <int W>
WHALE_INLINE void mq_values(const MultiQueryPart& p, int64_t c) {
  float acc[W][kMqHeads] = {};
  for (int64_t s = p.s0; s < p.s1; ++s) {
    const float* w = p.scores + (s - p.s0) * kMqHeads;
    const float* vs = p.v + s * p.v_row + c;
    for (int i = 0; i < W; ++i)
      for (int h = 0; h < kMqHeads; ++h) acc[i][h] += vs[i] * w[h];
  }
  for (int i = 0; i < W; ++i)
    for (int h = 0; h < kMqHeads; ++h) p.o_t[(c + i) * kMqHeads + h] = acc[i][h];
}

// Per-head maximum, exponentials in place and their sums.
WHALE_INLINE void mq_softmax_part(const MultiQueryPart& p) {
  const int64_t n = p.s1 - p.s0;
  float m[kMqHeads], l[kMqHeads] = {};
  for (int h = 0; h < kMqHeads; ++h) m[h] = -INFINITY;
  for (int64_t s = 0; s < n; ++s)
    for (int h = 0; h < kMqHeads; ++h) m[h] = std::max(m[h], p.scores[s * kMqHeads + h]);
  for (int64_t s = 0; s < n; ++s) {
    for (int h = 0; h < kMqHeads; ++h) {
      const float e = exp_nonpositive(p.scores[s * kMqHeads + h] - m[h]);
      p.scores[s * kMqHeads + h] = e;
      l[h] += e;
    }
  }
  for (int h = 0; h < kMqHeads; ++h) p.m[h] = m[h], p.l[h] = l[h];
}

template <int R, int W>
WHALE_INLINE void multi_query_body(const MultiQueryPart& p) {
  int64_t s = p.s0;
  for (; s + R <= p.s1; s += R) mq_scores<R>(p, s, p.scores + (s - p.s0) * kMqHeads);
  for (; s < p.s1; ++s) mq_scores<1>(p, s, p.scores + (s - p.s0) * kMqHeads);
  mq_softmax_part(p);
  int64_t c = 0;
  for (; c + W <= p.dv; c += W) mq_values<W>(p, c);
  for (; c < p.dv; ++c) mq_values<1>(p, c);
}

void multi_query_portable(const MultiQueryPart& p) { multi_query_body<4, 4>(p); }
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void multi_query_avx2(const MultiQueryPart& p) {
  multi_query_body<4, 4>(p);
}

// e^x for x ≤ 0, as exp_nonpositive, 16 lanes at a time.
__attribute__((target("avx512f,fma"))) inline __m512 exp_nonpositive_avx512(__m512 x) {
  const __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                 _mm512_set1_ps(-126.0f));
  const __m512 i = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, i);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int c = 1; c < 7; ++c) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[c]));
  const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(i), 23);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}

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

// In intrinsics: 16 heads fill one register, and every multiply-add takes its broadcast
// operand straight from memory. Scores take 8 keys at a time (8 row pointers stay in general
// registers); values go over the keys in chunks that stay in L1 for all the value columns.
// Scores of keys s..s+R-1 for the 16 heads, one vector per key. Even and odd dimensions in
// separate accumulators: with R = 12, 24 chains cover the FMA latency, and each pair of query
// loads feeds 24 multiply-adds.
template <int R>
__attribute__((target("avx512f,fma"))) inline void mq_scores_avx512(const MultiQueryPart& p,
                                                                    int64_t s) {
  __m512 even[R], odd[R];
  for (int j = 0; j < R; ++j) even[j] = odd[j] = _mm512_setzero_ps();
  const float* k[R];
  for (int j = 0; j < R; ++j) k[j] = p.k + (s + j) * p.k_row;
  int64_t d = 0;
  for (; d + 2 <= p.dk; d += 2) {
    if (R > 1 && d % 16 == 0) {
      // The same line of the next R keys: in a forward pass the cache comes from L3, and
      // the hardware's prefetchers do not follow R interleaved rows far enough ahead.
      for (int j = 0; j < R; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(k[j] + R * p.k_row + d), _MM_HINT_T0);
    }
    const __m512 q0 = _mm512_loadu_ps(p.q_t + d * kMqHeads);
    const __m512 q1 = _mm512_loadu_ps(p.q_t + (d + 1) * kMqHeads);
    for (int j = 0; j < R; ++j) {
      even[j] = _mm512_fmadd_ps(_mm512_set1_ps(k[j][d]), q0, even[j]);
      odd[j] = _mm512_fmadd_ps(_mm512_set1_ps(k[j][d + 1]), q1, odd[j]);
    }
  }
  if (d < p.dk) {
    const __m512 q0 = _mm512_loadu_ps(p.q_t + d * kMqHeads);
    for (int j = 0; j < R; ++j) even[j] = _mm512_fmadd_ps(_mm512_set1_ps(k[j][d]), q0, even[j]);
  }
  for (int j = 0; j < R; ++j)
    _mm512_storeu_ps(p.scores + (s - p.s0 + j) * kMqHeads, _mm512_add_ps(even[j], odd[j]));
}

__attribute__((target("avx512f,fma"))) void multi_query_avx512(const MultiQueryPart& p) {
  int64_t s = p.s0;
  for (; s + 12 <= p.s1; s += 12) mq_scores_avx512<12>(p, s);
  for (; s + 4 <= p.s1; s += 4) mq_scores_avx512<4>(p, s);
  for (; s < p.s1; ++s) mq_scores_avx512<1>(p, s);

  const int64_t n = p.s1 - p.s0;
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; ++j) m = _mm512_max_ps(m, _mm512_loadu_ps(p.scores + j * kMqHeads));
  __m512 l = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    float* row = p.scores + j * kMqHeads;
    const __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_loadu_ps(row), m));
    _mm512_storeu_ps(row, e);
    l = _mm512_add_ps(l, e);
  }
  _mm512_storeu_ps(p.m, m);
  _mm512_storeu_ps(p.l, l);

  constexpr int W = 16;
  constexpr int64_t kChunk = 32;  // 32 cache rows of values: 36 KB at MLA's width
  const int64_t dv_vec = p.dv / W * W;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t j1 = std::min(n, j0 + kChunk);
    for (int64_t c = 0; c < dv_vec; c += W) {
      __m512 acc[W];
      for (int i = 0; i < W; ++i)
        acc[i] = j0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(p.o_t + (c + i) * kMqHeads);
      for (int64_t j = j0; j < j1; ++j) {
        const __m512 w = _mm512_loadu_ps(p.scores + j * kMqHeads);
        const float* vs = p.v + (p.s0 + j) * p.v_row + c;
        for (int i = 0; i < W; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(vs[i]), w, acc[i]);
      }
      for (int i = 0; i < W; ++i) _mm512_storeu_ps(p.o_t + (c + i) * kMqHeads, acc[i]);
    }
  }
  for (int64_t c = dv_vec; c < p.dv; ++c) mq_values<1>(p, c);
}
#endif

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void score_block_avx2(const float* const* q, const float* kt,
                                                          int64_t dk, float scale,
                                                          float* const* out) {
  score_block(q, kt, dk, scale, out);
}
// e^x for x ≤ 0, as exp_nonpositive, 8 lanes at a time.
__attribute__((target("avx2,fma"))) inline __m256 exp_nonpositive_avx2(__m256 x) {
  const __m256 t = _mm256_max_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                 _mm256_set1_ps(-126.0f));
  const __m256 i = _mm256_floor_ps(t);
  const __m256 f = _mm256_sub_ps(t, i);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int c = 1; c < 7; ++c) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[c]));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(i), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
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

__attribute__((target("avx2,fma"))) void attention_avx2(const AttentionBlock& b) {
  attention_block_body<score_block_avx2>(b);
}

// The scores in intrinsics: the compiler kept the generic version's accumulators on the stack.
__attribute__((target("avx512f,fma"))) void score_block_avx512(const float* const* q,
                                                               const float* kt, int64_t dk,
                                                               float scale, float* const* out) {
  __m512 even[kQ], odd[kQ];
  for (int i = 0; i < kQ; ++i) even[i] = odd[i] = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 2 <= dk; d += 2) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * 16), k1 = _mm512_loadu_ps(kt + (d + 1) * 16);
    for (int i = 0; i < kQ; ++i) {
      even[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), k0, even[i]);
      odd[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d + 1]), k1, odd[i]);
    }
  }
  for (; d < dk; ++d) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * 16);
    for (int i = 0; i < kQ; ++i) even[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), k0, even[i]);
  }
  const __m512 s = _mm512_set1_ps(scale);
  for (int i = 0; i < kQ; ++i) _mm512_storeu_ps(out[i], _mm512_mul_ps(_mm512_add_ps(even[i], odd[i]), s));
}
// score_block_avx512 over two key blocks, four queries at a time: each pair of query broadcasts
// feeds 4 multiply-adds instead of 2 (the sums, and their order, are score_block_avx512's).
template <int Q0>
__attribute__((target("avx512f,fma"))) inline void score_pair_part_avx512(
    const float* const* q, const float* kt, int64_t dk, float scale, float* const* out,
    float* const* next) {
  constexpr int kPart = 4;
  __m512 even[2][kPart], odd[2][kPart];
  for (int i = 0; i < kPart; ++i)
    even[0][i] = odd[0][i] = even[1][i] = odd[1][i] = _mm512_setzero_ps();
  const float* kt1 = kt + dk * 16;
  int64_t d = 0;
  for (; d + 2 <= dk; d += 2) {
    const __m512 a0 = _mm512_loadu_ps(kt + d * 16), a1 = _mm512_loadu_ps(kt + (d + 1) * 16);
    const __m512 b0 = _mm512_loadu_ps(kt1 + d * 16), b1 = _mm512_loadu_ps(kt1 + (d + 1) * 16);
    for (int i = 0; i < kPart; ++i) {
      const __m512 q0 = _mm512_set1_ps(q[Q0 + i][d]), q1 = _mm512_set1_ps(q[Q0 + i][d + 1]);
      even[0][i] = _mm512_fmadd_ps(q0, a0, even[0][i]);
      odd[0][i] = _mm512_fmadd_ps(q1, a1, odd[0][i]);
      even[1][i] = _mm512_fmadd_ps(q0, b0, even[1][i]);
      odd[1][i] = _mm512_fmadd_ps(q1, b1, odd[1][i]);
    }
  }
  for (; d < dk; ++d) {
    const __m512 a0 = _mm512_loadu_ps(kt + d * 16), b0 = _mm512_loadu_ps(kt1 + d * 16);
    for (int i = 0; i < kPart; ++i) {
      const __m512 q0 = _mm512_set1_ps(q[Q0 + i][d]);
      even[0][i] = _mm512_fmadd_ps(q0, a0, even[0][i]);
      even[1][i] = _mm512_fmadd_ps(q0, b0, even[1][i]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
  for (int i = 0; i < kPart; ++i) {
    _mm512_storeu_ps(out[Q0 + i], _mm512_mul_ps(_mm512_add_ps(even[0][i], odd[0][i]), s));
    _mm512_storeu_ps(next[Q0 + i], _mm512_mul_ps(_mm512_add_ps(even[1][i], odd[1][i]), s));
  }
}

__attribute__((target("avx512f,fma"))) void score_pair_avx512(const float* const* q,
                                                              const float* kt, int64_t dk,
                                                              float scale, float* const* out,
                                                              float* const* next) {
  static_assert(kQ == 8);
  score_pair_part_avx512<0>(q, kt, dk, scale, out, next);
  score_pair_part_avx512<4>(q, kt, dk, scale, out, next);
}

// softmax_row in 16 lanes (the compiler keeps the scalar one's max and sum in order, unvectorised).
__attribute__((target("avx512f,fma"))) void softmax_row_avx512(float* s, int64_t n, int64_t width) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
  m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, s + j));
  const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + j), max));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (j < n) {
    const __m512 e = exp_nonpositive_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + j), max));
    _mm512_mask_storeu_ps(s + j, tail, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(tail, e));
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (j = 0; j + 16 <= n; j += 16)
    _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
  if (j < n)
    _mm512_mask_storeu_ps(s + j, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, s + j), inv));
  for (j = n; j < width; ++j) s[j] = 0.0f;
}

__attribute__((target("avx512f,fma"))) void attention_avx512(const AttentionBlock& b) {
  attention_block_body<score_block_avx512, softmax_row_avx512, score_pair_avx512>(b);
}

// transpose_keys with gathers: one 16-key column per instruction.
__attribute__((target("avx512f"))) void transpose_keys_avx512(const float* k, int64_t k_row,
                                                              int64_t n_kv, int64_t dk, float* out) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(static_cast<int32_t>(k_row)));
  for (int64_t blk = 0; blk * 16 < n_kv; ++blk) {
    const int64_t here = std::min<int64_t>(16, n_kv - blk * 16);
    const __mmask16 live = static_cast<__mmask16>((1u << here) - 1);
    const float* base = k + blk * 16 * k_row;
    float* dst = out + blk * dk * 16;
    for (int64_t d = 0; d < dk; ++d) {
      _mm512_storeu_ps(dst + d * 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, idx, base + d, 4));
    }
  }
}
#endif

}  // namespace

float fma_throughput_loop(Isa isa, int64_t iters) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return fma_avx512(iters);
  if (isa == Isa::kAvx2) return fma_avx2(iters);
#endif
  return fma_portable(iters);
}

void transpose_keys(const float* k, int64_t k_row, int64_t n_kv, int64_t dk, float* out, Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return transpose_keys_avx512(k, k_row, n_kv, dk, out);
#else
  (void)isa;
#endif
  const int64_t blocks = (n_kv + 15) / 16;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float* dst = out + blk * dk * 16;
    for (int64_t j = 0; j < 16; ++j) {
      const int64_t s = blk * 16 + j;
      if (s < n_kv) {
        const float* src = k + s * k_row;
        for (int64_t d = 0; d < dk; ++d) dst[d * 16 + j] = src[d];
      } else {
        for (int64_t d = 0; d < dk; ++d) dst[d * 16 + j] = 0.0f;
      }
    }
  }
}

AttentionBlockFn attention_block_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return attention_avx512;
  if (isa == Isa::kAvx2) return attention_avx2;
#endif
  return attention_portable;
}

SwigluFn swiglu_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return swiglu_avx512;
  if (isa == Isa::kAvx2) return swiglu_avx2;
#endif
  return swiglu_portable;
}

MultiQueryFn multi_query_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return multi_query_avx512;
  if (isa == Isa::kAvx2) return multi_query_avx2;
#endif
  return multi_query_portable;
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

AxpyFn axpy_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return axpy_avx512;
  if (isa == Isa::kAvx2) return axpy_avx2;
#endif
  return axpy_portable;
}

}  // namespace whale::cpu
