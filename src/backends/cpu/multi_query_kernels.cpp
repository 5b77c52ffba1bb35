// Multi-query attention (absorbed MLA's form: one kv head for all query heads) over the
// cache rows, f32 or bf16, compiled per instruction set and picked at run time; declared in
// attention_kernels.h beside prefill's block attention.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "backends/cpu/attention_kernels.h"
#include "backends/cpu/exp_kernels.h"
#include "backends/cpu/simd.h"
#include "core/dtype.h"

namespace whale::cpu {
namespace {

#define WHALE_INLINE inline __attribute__((always_inline))

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

// ---- multi-query attention over a bf16 cache ---------------------------------------------------

constexpr int64_t kWideKeys = 64;   // keys widened at a time: 64 cache rows of MLA are 74 KB
constexpr int64_t kPairChunk = 32;  // keys of values interleaved at a time (AVX512-BF16)

using WidenFn = void (*)(const uint16_t*, int64_t, float*);

WHALE_INLINE void widen_generic(const uint16_t* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}
void widen_portable(const uint16_t* x, int64_t n, float* y) { widen_generic(x, n, y); }

// The f32 kernel F over the part's keys, kWideKeys at a time widened into scratch, the
// chunks' parts merged. Where keys and values are the same rows (MLA's cache), one widened
// copy serves both.
template <MultiQueryFn F, WidenFn Widen>
void multi_query_widened(const MultiQueryPart& p) {
  const bool shared = p.v16 == p.k16 && p.v_row == p.k_row && p.dv <= p.dk;
  float* wk = p.wide;                                          // [kWideKeys][dk]
  float* wv = shared ? wk : wk + kWideKeys * p.dk;             // [kWideKeys][dv]
  float* sub = wk + kWideKeys * (p.dk + (shared ? 0 : p.dv));  // m, l and o_t of a chunk
  for (int64_t s = p.s0; s < p.s1; s += kWideKeys) {
    const int64_t e = std::min(p.s1, s + kWideKeys);
    for (int64_t r = s; r < e; ++r) {
      Widen(p.k16 + r * p.k_row, p.dk, wk + (r - s) * p.dk);
      if (!shared) Widen(p.v16 + r * p.v_row, p.dv, wv + (r - s) * p.dv);
    }
    MultiQueryPart c = p;
    c.k = wk, c.k_row = p.dk;
    c.v = wv, c.v_row = shared ? p.dk : p.dv;
    c.s0 = 0, c.s1 = e - s;
    if (s > p.s0) c.m = sub, c.l = sub + kMqHeads, c.o_t = sub + 2 * kMqHeads;
    F(c);
    if (s > p.s0) merge_multi_query_part(p, c.m, c.l, c.o_t);
  }
}
#if defined(__x86_64__)
// AVX2: the 16 heads in two 8-lane registers, 4 keys (or value columns) at a time, so that the
// 8 accumulators fill 16 registers with the operands beside them. Left to the compiler (the
// generic body), decode attention at 540 cached positions took 0.80 ms per layer; this takes
// 0.08 (lab, AMD Zen 4, 2 threads).
template <int R>
__attribute__((target("avx2,fma"))) inline void mq_scores_avx2(const MultiQueryPart& p, int64_t s) {
  __m256 acc[R][2];
  for (int j = 0; j < R; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
  const float* k[R];
  for (int j = 0; j < R; ++j) k[j] = p.k + (s + j) * p.k_row;
  for (int64_t d = 0; d < p.dk; ++d) {
    if (R > 1 && d % 16 == 0) {
      for (int j = 0; j < R; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(k[j] + R * p.k_row + d), _MM_HINT_T0);
    }
    const __m256 q0 = _mm256_loadu_ps(p.q_t + d * kMqHeads);
    const __m256 q1 = _mm256_loadu_ps(p.q_t + d * kMqHeads + 8);
    for (int j = 0; j < R; ++j) {
      const __m256 kd = _mm256_broadcast_ss(k[j] + d);
      acc[j][0] = _mm256_fmadd_ps(kd, q0, acc[j][0]);
      acc[j][1] = _mm256_fmadd_ps(kd, q1, acc[j][1]);
    }
  }
  for (int j = 0; j < R; ++j) {
    _mm256_storeu_ps(p.scores + (s - p.s0 + j) * kMqHeads, acc[j][0]);
    _mm256_storeu_ps(p.scores + (s - p.s0 + j) * kMqHeads + 8, acc[j][1]);
  }
}

__attribute__((target("avx2,fma"))) void multi_query_avx2(const MultiQueryPart& p) {
  int64_t s = p.s0;
  for (; s + 4 <= p.s1; s += 4) mq_scores_avx2<4>(p, s);
  for (; s < p.s1; ++s) mq_scores_avx2<1>(p, s);

  const int64_t n = p.s1 - p.s0;
  __m256 m[2] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY)};
  for (int64_t j = 0; j < n; ++j) {
    for (int h = 0; h < 2; ++h)
      m[h] = _mm256_max_ps(m[h], _mm256_loadu_ps(p.scores + j * kMqHeads + 8 * h));
  }
  __m256 l[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t j = 0; j < n; ++j) {
    for (int h = 0; h < 2; ++h) {
      float* row = p.scores + j * kMqHeads + 8 * h;
      const __m256 e = exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(row), m[h]));
      _mm256_storeu_ps(row, e);
      l[h] = _mm256_add_ps(l[h], e);
    }
  }
  for (int h = 0; h < 2; ++h) {
    _mm256_storeu_ps(p.m + 8 * h, m[h]);
    _mm256_storeu_ps(p.l + 8 * h, l[h]);
  }

  constexpr int W = 4;
  constexpr int64_t kChunk = 32;  // cache rows of values that stay in L1 for every column
  const int64_t dv_vec = p.dv / W * W;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t j1 = std::min(n, j0 + kChunk);
    for (int64_t c = 0; c < dv_vec; c += W) {
      __m256 acc[W][2];
      for (int i = 0; i < W; ++i) {
        for (int h = 0; h < 2; ++h) {
          acc[i][h] =
              j0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(p.o_t + (c + i) * kMqHeads + 8 * h);
        }
      }
      for (int64_t j = j0; j < j1; ++j) {
        const __m256 w0 = _mm256_loadu_ps(p.scores + j * kMqHeads);
        const __m256 w1 = _mm256_loadu_ps(p.scores + j * kMqHeads + 8);
        const float* vs = p.v + (p.s0 + j) * p.v_row + c;
        for (int i = 0; i < W; ++i) {
          const __m256 v = _mm256_broadcast_ss(vs + i);
          acc[i][0] = _mm256_fmadd_ps(v, w0, acc[i][0]);
          acc[i][1] = _mm256_fmadd_ps(v, w1, acc[i][1]);
        }
      }
      for (int i = 0; i < W; ++i) {
        for (int h = 0; h < 2; ++h) _mm256_storeu_ps(p.o_t + (c + i) * kMqHeads + 8 * h, acc[i][h]);
      }
    }
  }
  for (int64_t c = dv_vec; c < p.dv; ++c) mq_values<1>(p, c);
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

// The per-head maximum of the part's scores, their exponentials in place and their sums.
__attribute__((target("avx512f,fma"))) inline void mq_softmax_avx512(const MultiQueryPart& p) {
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
}

__attribute__((target("avx512f,fma"))) void multi_query_avx512(const MultiQueryPart& p) {
  int64_t s = p.s0;
  for (; s + 12 <= p.s1; s += 12) mq_scores_avx512<12>(p, s);
  for (; s + 4 <= p.s1; s += 4) mq_scores_avx512<4>(p, s);
  for (; s < p.s1; ++s) mq_scores_avx512<1>(p, s);

  mq_softmax_avx512(p);

  const int64_t n = p.s1 - p.s0;
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

__attribute__((target("avx2"))) void widen_avx2(const uint16_t* x, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  widen_generic(x + i, n - i, y + i);
}
__attribute__((target("avx512f"))) void widen_avx512(const uint16_t* x, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  widen_generic(x + i, n - i, y + i);
}

// AVX512-BF16: vdpbf16ps multiplies 16 pairs of bf16 and adds both products to 16 f32 lanes,
// twice the multiply-adds of an f32 FMA per instruction. Lanes are the 16 heads, as in the f32
// kernel: scores pair two dimensions of a key (adjacent in its cache row, so one 32-bit
// broadcast), values pair two keys (interleaved into scratch a chunk at a time).
#define WHALE_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,fma")))

// Lane i: lo[i] rounded to bf16 in its low half, hi[i] in its high half.
WHALE_BF16 inline __m512i pair_bf16(__m512 lo, __m512 hi) {
  const __m512i a = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(lo)));
  const __m512i b = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(hi)));
  return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}
WHALE_BF16 inline __m512i widen_pair(const uint16_t* lo, const uint16_t* hi) {
  const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo)));
  if (hi == nullptr) return a;
  const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)));
  return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}
WHALE_BF16 inline __m512 dot_pairs(__m512 acc, __m512i a, uint32_t b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a),
                          reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(b))));
}
inline uint32_t load_pair(const uint16_t* x) {
  uint32_t v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

// Scores of keys s..s+R-1, one vector per key; qp holds the queries' dimension pairs.
template <int R>
WHALE_BF16 inline void mq_scores_bf16(const MultiQueryPart& p, const uint32_t* qp, int64_t s) {
  __m512 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm512_setzero_ps();
  const uint16_t* k[R];
  for (int j = 0; j < R; ++j) k[j] = p.k16 + (s + j) * p.k_row;
  const int64_t pairs = p.dk / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    if (R > 1 && i % 16 == 0) {  // a 64-byte line is 16 pairs
      for (int j = 0; j < R; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(k[j] + R * p.k_row + 2 * i), _MM_HINT_T0);
    }
    const __m512i q = _mm512_loadu_si512(qp + i * kMqHeads);
    for (int j = 0; j < R; ++j) acc[j] = dot_pairs(acc[j], q, load_pair(k[j] + 2 * i));
  }
  if (p.dk % 2) {  // the last dimension alone: its pair's other half is zero in qp
    const __m512i q = _mm512_loadu_si512(qp + pairs * kMqHeads);
    for (int j = 0; j < R; ++j) acc[j] = dot_pairs(acc[j], q, k[j][p.dk - 1]);
  }
  for (int j = 0; j < R; ++j) _mm512_storeu_ps(p.scores + (s - p.s0 + j) * kMqHeads, acc[j]);
}

WHALE_BF16 void multi_query_avx512_bf16(const MultiQueryPart& p) {
  const int64_t n = p.s1 - p.s0, dk_pairs = (p.dk + 1) / 2;
  constexpr int W = 16;
  const int64_t dv_vec = p.dv / W * W;
  auto* qp = reinterpret_cast<uint32_t*>(p.wide);  // [dk_pairs][16]
  uint32_t* wp = qp + dk_pairs * kMqHeads;         // [(n + 1) / 2][16]: weight pairs of keys
  uint32_t* vp = wp + (n + 1) / 2 * kMqHeads;      // [kPairChunk / 2][dv_vec]: value pairs
  for (int64_t i = 0; i < dk_pairs; ++i) {
    const __m512 lo = _mm512_loadu_ps(p.q_t + 2 * i * kMqHeads);
    const __m512 hi =
        2 * i + 1 < p.dk ? _mm512_loadu_ps(p.q_t + (2 * i + 1) * kMqHeads) : _mm512_setzero_ps();
    _mm512_storeu_si512(qp + i * kMqHeads, pair_bf16(lo, hi));
  }
  int64_t s = p.s0;
  for (; s + 12 <= p.s1; s += 12) mq_scores_bf16<12>(p, qp, s);
  for (; s + 4 <= p.s1; s += 4) mq_scores_bf16<4>(p, qp, s);
  for (; s < p.s1; ++s) mq_scores_bf16<1>(p, qp, s);

  mq_softmax_avx512(p);
  for (int64_t j = 0; j < n; j += 2) {
    const __m512 lo = _mm512_loadu_ps(p.scores + j * kMqHeads);
    const __m512 hi =
        j + 1 < n ? _mm512_loadu_ps(p.scores + (j + 1) * kMqHeads) : _mm512_setzero_ps();
    _mm512_storeu_si512(wp + j / 2 * kMqHeads, pair_bf16(lo, hi));
  }

  for (int64_t j0 = 0; j0 < n; j0 += kPairChunk) {
    const int64_t j1 = std::min(n, j0 + kPairChunk), chunk_pairs = (j1 - j0 + 1) / 2;
    for (int64_t jp = 0; jp < chunk_pairs; ++jp) {
      const int64_t j = j0 + 2 * jp;
      const uint16_t* lo = p.v16 + (p.s0 + j) * p.v_row;
      const uint16_t* hi = j + 1 < j1 ? lo + p.v_row : nullptr;
      for (int64_t c = 0; c < dv_vec; c += W)
        _mm512_storeu_si512(vp + jp * dv_vec + c, widen_pair(lo + c, hi ? hi + c : nullptr));
    }
    for (int64_t c = 0; c < dv_vec; c += W) {
      __m512 acc[W];
      for (int i = 0; i < W; ++i)
        acc[i] = j0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(p.o_t + (c + i) * kMqHeads);
      for (int64_t jp = 0; jp < chunk_pairs; ++jp) {
        const __m512i w = _mm512_loadu_si512(wp + (j0 / 2 + jp) * kMqHeads);
        const uint32_t* vs = vp + jp * dv_vec + c;
        for (int i = 0; i < W; ++i) acc[i] = dot_pairs(acc[i], w, vs[i]);
      }
      for (int i = 0; i < W; ++i) _mm512_storeu_ps(p.o_t + (c + i) * kMqHeads, acc[i]);
    }
  }
  for (int64_t c = dv_vec; c < p.dv; ++c) {  // columns past the last 16, from the f32 weights
    float acc[kMqHeads] = {};
    for (int64_t j = 0; j < n; ++j) {
      const float v = bf16_to_f32(p.v16[(p.s0 + j) * p.v_row + c]);
      for (int h = 0; h < kMqHeads; ++h) acc[h] += p.scores[j * kMqHeads + h] * v;
    }
    std::copy_n(acc, kMqHeads, p.o_t + c * kMqHeads);
  }
}
#undef WHALE_BF16
#endif

}  // namespace

void merge_multi_query_part(const MultiQueryPart& into, const float* m2, const float* l2,
                            const float* o2) {
  float a[kMqHeads], b[kMqHeads];
  for (int h = 0; h < kMqHeads; ++h) {
    const float m = std::max(into.m[h], m2[h]);
    a[h] = std::exp(into.m[h] - m), b[h] = std::exp(m2[h] - m);
    into.m[h] = m;
    into.l[h] = into.l[h] * a[h] + l2[h] * b[h];
  }
  for (int64_t c = 0; c < into.dv; ++c) {
    float* o = into.o_t + c * kMqHeads;
    const float* o_2 = o2 + c * kMqHeads;
    for (int h = 0; h < kMqHeads; ++h) o[h] = o[h] * a[h] + o_2[h] * b[h];
  }
}

MultiQueryFn multi_query_kernel(Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return multi_query_avx512;
  if (isa == Isa::kAvx2) return multi_query_avx2;
#endif
  return multi_query_portable;
}

bool multi_query_bf16_rounds(Isa isa) {
#if defined(__x86_64__)
  return has_avx512(isa) && __builtin_cpu_supports("avx512bf16") &&
         __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

MultiQueryFn multi_query_bf16_kernel(Isa isa) {
#if defined(__x86_64__)
  if (multi_query_bf16_rounds(isa)) return multi_query_avx512_bf16;
  if (has_avx512(isa)) return multi_query_widened<multi_query_avx512, widen_avx512>;
  if (isa == Isa::kAvx2) return multi_query_widened<multi_query_avx2, widen_avx2>;
#endif
  return multi_query_widened<multi_query_portable, widen_portable>;
}

int64_t multi_query_bf16_scratch(int64_t dk, int64_t dv, int64_t n) {
  const int64_t widened = kWideKeys * (dk + dv) + (2 + dv) * kMqHeads;
  const int64_t paired = ((dk + 1) / 2 + (n + 1) / 2) * kMqHeads + kPairChunk / 2 * (dv / 16 * 16);
  return std::max(widened, paired);
}

}  // namespace whale::cpu
