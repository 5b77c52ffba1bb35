#include "backends/cpu/attention_kernels.h"

#include <algorithm>
#include <cmath>

#include "backends/cpu/exp_kernels.h"
#include "backends/cpu/simd.h"

namespace whale::cpu {
namespace {

// ---- blocks of queries over transposed keys (prefill) -----------------------------------------

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

// A block of fewer than kQ queries runs as kQ: the missing ones repeat the first query and
// write into scratch rows that are thrown away.
using ScoreBlockFn = void (*)(const float* const*, const float*, int64_t, float, float* const*);

using SoftmaxRowFn = void (*)(float*, int64_t, int64_t);
void softmax_row_generic(float* s, int64_t n, int64_t width) { softmax_row(s, n, width); }

// Scores of two consecutive key blocks at once (kt, and kt + dk · 16): where given, the body
// takes the blocks in pairs.
using ScorePairFn = void (*)(const float* const*, const float*, int64_t, float, float* const*,
                             float* const*);

// o[q][0, dv) = Σ_j p[q][j] · v_j over keys j < n, kQ queries: where given, it replaces the
// body's weigh_values.
using WeighFn = void (*)(const float* const*, int64_t, const float*, int64_t, float* const*,
                         int64_t);

template <ScoreBlockFn Score, SoftmaxRowFn Softmax = softmax_row_generic,
          ScorePairFn ScorePair = nullptr, WeighFn Weigh = nullptr>
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
  if constexpr (Weigh != nullptr) {
    Weigh(p, most, b.v, b.v_row, out, b.dv);
    return;
  }
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

#if defined(__x86_64__)
// Prefill attention in AVX2 intrinsics. Left to the compiler, the generic body kept its
// accumulators on the stack: 51.7 GFLOP/s for 512 queries over 16 heads, against 172.5 for the
// AVX-512 kernel (lab, AMD Zen 4, 2 threads).
// Scores of kQ queries, four at a time: 8 accumulators (two registers of 8 keys per query) with
// the block's two key vectors and a broadcast query element fill 11 of the 16 registers.
__attribute__((target("avx2,fma"))) void score_block_avx2(const float* const* q, const float* kt,
                                                          int64_t dk, float scale,
                                                          float* const* out) {
  constexpr int kPart = 4;
  const __m256 s = _mm256_set1_ps(scale);
  for (int i0 = 0; i0 < kQ; i0 += kPart) {
    __m256 lo[kPart], hi[kPart];
    for (int i = 0; i < kPart; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < dk; ++d) {
      const __m256 k0 = _mm256_loadu_ps(kt + d * 16), k1 = _mm256_loadu_ps(kt + d * 16 + 8);
      for (int i = 0; i < kPart; ++i) {
        const __m256 qd = _mm256_broadcast_ss(q[i0 + i] + d);
        lo[i] = _mm256_fmadd_ps(qd, k0, lo[i]);
        hi[i] = _mm256_fmadd_ps(qd, k1, hi[i]);
      }
    }
    for (int i = 0; i < kPart; ++i) {
      _mm256_storeu_ps(out[i0 + i], _mm256_mul_ps(lo[i], s));
      _mm256_storeu_ps(out[i0 + i] + 8, _mm256_mul_ps(hi[i], s));
    }
  }
}

// softmax_row in 8 lanes.
__attribute__((target("avx2,fma"))) void softmax_row_avx2(float* s, int64_t n, int64_t width) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
  float max = hmax256(m);
  for (int64_t t = j; t < n; ++t) max = std::max(max, s[t]);
  const __m256 vmax = _mm256_set1_ps(max);
  __m256 sum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmax));
    _mm256_storeu_ps(s + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = hsum256(sum);
  for (int64_t t = j; t < n; ++t) {
    s[t] = exp_nonpositive(s[t] - max);
    total += s[t];
  }
  const float inv = 1.0f / total;
  const __m256 vinv = _mm256_set1_ps(inv);
  for (j = 0; j + 8 <= n; j += 8)
    _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), vinv));
  for (; j < n; ++j) s[j] *= inv;
  for (j = n; j < width; ++j) s[j] = 0.0f;
}

// Values 8 columns at a time: 8 accumulators (one per query), the value vector and a broadcast
// weight.
__attribute__((target("avx2,fma"))) void weigh_values_avx2(const float* const* p, int64_t n,
                                                           const float* v, int64_t v_row,
                                                           float* const* o, int64_t dv) {
  int64_t c = 0;
  for (; c + 8 <= dv; c += 8) {
    __m256 acc[kQ];
    for (int i = 0; i < kQ; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 vr = _mm256_loadu_ps(v + j * v_row + c);
      for (int i = 0; i < kQ; ++i)
        acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p[i] + j), vr, acc[i]);
    }
    for (int i = 0; i < kQ; ++i) _mm256_storeu_ps(o[i] + c, acc[i]);
  }
  for (; c < dv; ++c) weigh_values<1>(p, n, v, v_row, o, c);
}

__attribute__((target("avx2,fma"))) void attention_avx2(const AttentionBlock& b) {
  attention_block_body<score_block_avx2, softmax_row_avx2, nullptr, weigh_values_avx2>(b);
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
  for (int i = 0; i < kQ; ++i)
    _mm512_storeu_ps(out[i], _mm512_mul_ps(_mm512_add_ps(even[i], odd[i]), s));
}
// score_block_avx512 over two key blocks, four queries at a time: each pair of query broadcasts
// feeds 4 multiply-adds instead of 2 (the sums, and their order, are score_block_avx512's).
template <int Q0>
__attribute__((target("avx512f,fma"))) inline void score_pair_part_avx512(const float* const* q,
                                                                          const float* kt,
                                                                          int64_t dk, float scale,
                                                                          float* const* out,
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
                                                              int64_t n_kv, int64_t dk,
                                                              float* out) {
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(static_cast<int32_t>(k_row)));
  for (int64_t blk = 0; blk * 16 < n_kv; ++blk) {
    const int64_t here = std::min<int64_t>(16, n_kv - blk * 16);
    const __mmask16 live = static_cast<__mmask16>((1u << here) - 1);
    const float* base = k + blk * 16 * k_row;
    float* dst = out + blk * dk * 16;
    for (int64_t d = 0; d < dk; ++d) {
      _mm512_storeu_ps(dst + d * 16,
                       _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, idx, base + d, 4));
    }
  }
}

#endif

}  // namespace

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

}  // namespace whale::cpu
