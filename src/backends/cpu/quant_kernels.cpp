#include "backends/cpu/quant_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cpu/quant_rows.h"
#include "backends/cpu/simd.h"
#include "ops/quant.h"

namespace whale::cpu {
namespace {

using ops::kQuantBlock;
using ops::Matrix;
using ops::WeightFormat;

using quant::kGroup;
using quant::kHalf;
using quant::kPrefetch;
using quant::prepared_position;
using quant::row_data;
using quant::RowPointers;
// The largest activation code: q = round(x / scale), scale = max|x| / code max; 16 bits for kQ8,
// 8 for kQ4 (see quant_kernels.h).
constexpr int32_t kCodeMax = 32767;
constexpr int32_t kCode8Max = 127;

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

struct Prepared {
  const int8_t* hi;
  const uint8_t* lo;
  const float* scales;
  const int32_t* zero;
  const int16_t* codes;
  // Element i's code (16-bit for kQ8, 8-bit for kQ4).
  int32_t code(int64_t i) const { return codes[i]; }
};

Prepared view(const uint8_t* xp, int64_t k) {
  const PreparedLayout l = prepared_layout(k);
  return {reinterpret_cast<const int8_t*>(xp + l.hi), xp + l.lo,
          reinterpret_cast<const float*>(xp + l.scales),
          reinterpret_cast<const int32_t*>(xp + l.zero),
          reinterpret_cast<const int16_t*>(xp + l.codes)};
}

inline float scale_at(const Matrix& w, int64_t r, int64_t b) {
  uint16_t h;
  std::memcpy(&h, static_cast<const uint8_t*>(w.scale) + ((w.row_offset + r) * w.scale_cols + b) * 2,
              2);
  return f16_to_f32(h);
}

// Σ over blocks [b0, b1) of row r, in block order: blocks outside full groups are in natural
// order in both the codes and the activations. `grouped` says whether full groups of kQ4 are in
// the kernel order.
float q8_blocks(const Prepared& x, const Matrix& w, int64_t r, int64_t b0, int64_t b1) {
  const auto* q = reinterpret_cast<const int8_t*>(row_data(w, r));
  float acc = 0;
  for (int64_t b = b0; b < b1; ++b) {
    int32_t dot = 0;
    for (int64_t i = b * kQuantBlock; i < (b + 1) * kQuantBlock; ++i) dot += q[i] * x.code(i);
    acc += scale_at(w, r, b) * x.scales[b] * static_cast<float>(dot);
  }
  return acc;
}

float q4_blocks(const Prepared& x, const Matrix& w, int64_t r, int64_t b0, int64_t b1) {
  const uint8_t* p = row_data(w, r);
  float acc = 0;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* bytes = p + b * kHalf;
    // Where the activations of this block's low and high nibbles are.
    const int64_t first = prepared_position(WeightFormat::kQ4, w.cols, b * kQuantBlock);
    const int64_t second = prepared_position(WeightFormat::kQ4, w.cols, b * kQuantBlock + kHalf);
    int32_t dot = 0;
    for (int64_t i = 0; i < kHalf; ++i) {
      dot += ops::kQ4Levels[bytes[i] & 0xF] * x.code(first + i) +
             ops::kQ4Levels[bytes[i] >> 4] * x.code(second + i);
    }
    acc += scale_at(w, r, b) * x.scales[b] * static_cast<float>(dot);
  }
  return acc;
}

// Every row of every token through one format's scalar block sums.
template <float (*Blocks)(const Prepared&, const Matrix&, int64_t, int64_t, int64_t)>
void rows_portable(const uint8_t* xp, int64_t ldx, int tokens, const Matrix& w, int64_t r, int rows,
                   float* out, int64_t ldo) {
  for (int t = 0; t < tokens; ++t) {
    const Prepared x = view(xp + t * ldx, w.cols);
    for (int i = 0; i < rows; ++i) out[t * ldo + i] = Blocks(x, w, r + i, 0, w.cols / kQuantBlock);
  }
}

#if defined(__x86_64__)

// ops::kQ4Levels + 128 (as unsigned bytes) in every 128-bit lane, for byte shuffles.
__attribute__((target(WHALE_AVX512_VNNI))) inline __m512i q4_levels_biased_512() {
  alignas(16) uint8_t t[16];
  for (int i = 0; i < 16; ++i) t[i] = static_cast<uint8_t>(ops::kQ4Levels[i] + 128);
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

// VNNI multiplies unsigned bytes by signed ones. The weights are the unsigned side, as w + 128,
// and each sum starts from the prepared per-lane correction (−128 · Σ codes over each block's
// lanes) that takes the + 128 off.
//
// q4: the activations' 8-bit codes (in `hi`), one pass. Per group of 128 columns and row, 64
// bytes of nibbles, unpacked into the low nibbles (columns 32j + i of block j, i < 16, in bytes
// 16j + i) and the high ones (columns 32j + 16 + i) and looked up (one byte shuffle each) as
// their level + 128, an unsigned byte. The activations are prepared in that order. VNNI lane l
// then holds block l / 4, so the four block scales are spread over lanes with one permute.
//
// q8: the 16-bit codes q = 256·hi + lo (hi signed, lo unsigned) in two passes: Σ (w + 128)·hi
// from the correction, shifted left 8 bits, then + Σ lo·w, where lo is the unsigned side and w
// is signed as stored.
// The body of both versions, LOOKUP(v) setting first and second (biased levels) from the bytes v:
// R rows by T tokens, each row's codes looked up once for all T. A pair's sums run in the same
// order whatever R and T are, so a result never depends on its neighbours.
#define WHALE_Q4_ROWS_AVX512_BODY(LOOKUP)                                                         \
  {                                                                                               \
    Prepared x[T];                                                                                \
    for (int t = 0; t < T; ++t) x[t] = view(xp + t * ldx, w.cols);                                \
    const int64_t groups = w.cols / kGroup;                                                       \
    const RowPointers<R> p(w, r);                                                                 \
    __m512 acc[R][T];                                                                             \
    for (int i = 0; i < R; ++i) {                                                                 \
      for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();                                \
    }                                                                                             \
    const __m512i nibble = _mm512_set1_epi8(0x0F);                                                \
    const __m512i levels = q4_levels_biased_512();                                                \
    const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);      \
    for (int64_t g = 0; g < groups; ++g) {                                                        \
      __m512i hi0[T], hi1[T], zero[T];                                                            \
      __m128 xs[T];                                                                               \
      for (int t = 0; t < T; ++t) {                                                               \
        hi0[t] = _mm512_loadu_si512(x[t].hi + g * kGroup);                                        \
        hi1[t] = _mm512_loadu_si512(x[t].hi + g * kGroup + 64);                                   \
        zero[t] = _mm512_loadu_si512(x[t].zero + g * 32);                                         \
        xs[t] = _mm_loadu_ps(x[t].scales + g * 4);                                                \
      }                                                                                           \
      for (int i = 0; i < R; ++i) {                                                               \
        _mm_prefetch(reinterpret_cast<const char*>(p.data[i] + g * 64 + kPrefetch), _MM_HINT_T1); \
        if ((g & 7) == 0)                                                                         \
          _mm_prefetch(reinterpret_cast<const char*>(p.scales[i] + g * 4 + kPrefetch / 8),        \
                       _MM_HINT_T0);                                                              \
        const __m512i v = _mm512_loadu_si512(p.data[i] + g * 64);                                 \
        __m512i first, second;                                                                    \
        LOOKUP(v)                                                                                 \
        const __m128 ws =                                                                         \
            _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.scales[i] + g * 4))); \
        for (int t = 0; t < T; ++t) {                                                             \
          const __m512i dot =                                                                     \
              _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero[t], first, hi0[t]), second, hi1[t]);   \
          const __m512 s =                                                                        \
              _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(ws, xs[t])));       \
          acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[i][t]);                     \
        }                                                                                         \
      }                                                                                           \
    }                                                                                             \
    const bool tail = groups * 4 < w.cols / kQuantBlock;                                          \
    for (int i = 0; i < R; ++i) {                                                                 \
      for (int t = 0; t < T; ++t) {                                                               \
        float sum = _mm512_reduce_add_ps(acc[i][t]);                                              \
        if (tail) sum += q4_blocks(x[t], w, r + i, groups * 4, w.cols / kQuantBlock);             \
        out[t * ldo + i] = sum;                                                                   \
      }                                                                                           \
    }                                                                                             \
  }
#define WHALE_Q4_LOOKUP_SHUFFLE(v)                                  \
  first = _mm512_shuffle_epi8(levels, _mm512_and_si512(v, nibble)); \
  second = _mm512_shuffle_epi8(levels, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
// With VBMI, a 64-entry byte permute reads only an index's low 6 bits: the 16 levels repeated
// four times make it ignore bits 4-5, so neither nibble needs masking.
#define WHALE_Q4_LOOKUP_VBMI(v)               \
  (void)nibble;                               \
  first = _mm512_permutexvar_epi8(v, levels); \
  second = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), levels);

// clang-format off
template <int R, int T>
__attribute__((target(WHALE_AVX512_VNNI)))
void q4_tile_avx512(const uint8_t* xp, int64_t ldx, const Matrix& w, int64_t r, float* out,
                    int64_t ldo) WHALE_Q4_ROWS_AVX512_BODY(WHALE_Q4_LOOKUP_SHUFFLE)
template <int R, int T>
__attribute__((target(WHALE_AVX512_VNNI ",avx512vbmi")))
void q4_tile_avx512_vbmi(const uint8_t* xp, int64_t ldx, const Matrix& w, int64_t r, float* out,
                         int64_t ldo) WHALE_Q4_ROWS_AVX512_BODY(WHALE_Q4_LOOKUP_VBMI)
// clang-format on
#undef WHALE_Q4_LOOKUP_VBMI
#undef WHALE_Q4_LOOKUP_SHUFFLE
#undef WHALE_Q4_ROWS_AVX512_BODY

    // q8: w + 128 is w with its top bit flipped.
    __attribute__((target(WHALE_AVX512_VNNI))) inline __m512i
    q8_dot_avx512(__m512i zero, __m512i v, __m512i hi, __m512i lo) {
  const __m512i d =
      _mm512_dpbusd_epi32(zero, _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))), hi);
  return _mm512_dpbusd_epi32(_mm512_slli_epi32(d, 8), lo, v);
}

// R rows by T tokens, as the q4 kernel.
template <int R, int T>
__attribute__((target(WHALE_AVX512_VNNI))) void q8_tile_avx512(const uint8_t* xp, int64_t ldx,
                                                               const Matrix& w, int64_t r,
                                                               float* out, int64_t ldo) {
  Prepared x[T];
  for (int t = 0; t < T; ++t) x[t] = view(xp + t * ldx, w.cols);
  const int64_t groups = w.cols / kGroup;
  const RowPointers<R> p(w, r);
  const uint8_t* const* rows = p.data;
  const uint16_t* const* scales = p.scales;
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  const __m512i first = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i second = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  for (int64_t g = 0; g < groups; ++g) {
    __m512i hi0[T], hi1[T], lo0[T], lo1[T], z0[T], z1[T];
    __m128 xs[T];
    for (int t = 0; t < T; ++t) {
      hi0[t] = _mm512_loadu_si512(x[t].hi + g * kGroup);
      hi1[t] = _mm512_loadu_si512(x[t].hi + g * kGroup + 64);
      lo0[t] = _mm512_loadu_si512(x[t].lo + g * kGroup);
      lo1[t] = _mm512_loadu_si512(x[t].lo + g * kGroup + 64);
      z0[t] = _mm512_loadu_si512(x[t].zero + g * 32);
      z1[t] = _mm512_loadu_si512(x[t].zero + g * 32 + 16);
      xs[t] = _mm_loadu_ps(x[t].scales + g * 4);
    }
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + g * kGroup + kPrefetch), _MM_HINT_T1);
      if ((g & 3) == 0)
        _mm_prefetch(reinterpret_cast<const char*>(scales[i] + g * 4 + kPrefetch / 16),
                     _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + g * kGroup + 64 + kPrefetch),
                   _MM_HINT_T1);
      const __m512i v0 = _mm512_loadu_si512(rows[i] + g * kGroup);
      const __m512i v1 = _mm512_loadu_si512(rows[i] + g * kGroup + 64);
      const __m128 ws = _mm_cvtph_ps(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales[i] + g * 4)));
      for (int t = 0; t < T; ++t) {
        const __m512i d0 = q8_dot_avx512(z0[t], v0, hi0[t], lo0[t]);
        const __m512i d1 = q8_dot_avx512(z1[t], v1, hi1[t], lo1[t]);
        const __m512 s = _mm512_castps128_ps512(_mm_mul_ps(ws, xs[t]));
        acc[i][t] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(first, s), acc[i][t]);
        acc[i][t] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(second, s), acc[i][t]);
      }
    }
  }
  const bool tail = groups * 4 < w.cols / kQuantBlock;
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) {
      float sum = _mm512_reduce_add_ps(acc[i][t]);
      if (tail) sum += q8_blocks(x[t], w, r + i, groups * 4, w.cols / kQuantBlock);
      out[t * ldo + i] = sum;
    }
  }
}

// quantize_block_portable in AVX-512, with the same arithmetic in the same order (max of |x|,
// one division each for the scale and its inverse, multiply, clamp, round by adding and removing
// 1.5·2^23), so the codes and scale are bit for bit the same; returns Σ hi.
__attribute__((target("avx512f,avx512bw"))) inline __m512i round_codes(__m512 v, __m512 inv,
                                                                       int32_t code_max) {
  const __m512 limit = _mm512_set1_ps(static_cast<float>(code_max));
  v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), _mm512_sub_ps(_mm512_setzero_ps(), limit)),
                    limit);
  const __m512 round = _mm512_set1_ps(12582912.0f);
  return _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(v, round), round));
}

__attribute__((target("avx512f,avx512bw"))) float quantize_block_avx512(const float* x, int8_t* hi,
                                                                        uint8_t* lo,
                                                                        int32_t* hi_sum,
                                                                        int32_t code_max) {
  const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x)), b = _mm512_abs_ps(_mm512_loadu_ps(x + 16));
  const __m512 inf = _mm512_set1_ps(INFINITY);
  if ((_mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ) & _mm512_cmp_ps_mask(b, inf, _CMP_LT_OQ)) != 0xFFFF) {
    std::memset(hi, 0, kQuantBlock);  // as the scalar version: codes 0, a NaN scale
    std::memset(lo, 0, kQuantBlock);
    *hi_sum = 0;
    return NAN;
  }
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
  const float scale = amax / static_cast<float>(code_max);
  const __m512 inv = _mm512_set1_ps(amax > 0 ? static_cast<float>(code_max) / amax : 0.0f);
  const __m512i ca = round_codes(_mm512_loadu_ps(x), inv, code_max);
  const __m512i cb = round_codes(_mm512_loadu_ps(x + 16), inv, code_max);
  // 8-bit codes are hi themselves; vpmovdb keeps each lane's low byte: lo = q mod 256.
  const bool wide = code_max > kCode8Max;
  const __m512i ha = wide ? _mm512_srai_epi32(ca, 8) : ca,
                hb = wide ? _mm512_srai_epi32(cb, 8) : cb;
  const __m512i la = wide ? ca : _mm512_setzero_si512(), lb = wide ? cb : _mm512_setzero_si512();
  _mm_storeu_si128(reinterpret_cast<__m128i*>(hi), _mm512_cvtepi32_epi8(ha));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + 16), _mm512_cvtepi32_epi8(hb));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lo), _mm512_cvtepi32_epi8(la));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lo + 16), _mm512_cvtepi32_epi8(lb));
  *hi_sum = _mm512_reduce_add_epi32(_mm512_add_epi32(ha, hb));
  return scale;
}

#define WHALE_AVX2 "avx2,fma,f16c"

// 16 activations' 16-bit codes from the prepared ones.
__attribute__((target(WHALE_AVX2))) inline __m256i codes16_avx2(const int16_t* codes) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
}

// Rows r..r+R-1's products for 8 blocks from b: the f16 weight scales widened by F16C and
// multiplied by the activations' (8 of each, one instruction each), for broadcasts from memory.
// `ahead`: the blocks that the rows' codes prefetch lies ahead, for the scales' own prefetch.
// Fewer than 8 blocks left (`end`): those one at a time.
template <int R>
__attribute__((target(WHALE_AVX2))) inline void block_scales_avx2(const RowPointers<R>& p,
                                                                  const float* xs, int64_t b,
                                                                  int64_t end, int64_t ahead,
                                                                  float (*out)[8]) {
  if (end - b < 8) {
    for (int i = 0; i < R; ++i) {
      for (int64_t j = b; j < end; ++j) out[i][j - b] = _cvtsh_ss(p.scales[i][j]) * xs[j];
    }
    return;
  }
  const __m256 x = _mm256_loadu_ps(xs + b);
  for (int i = 0; i < R; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(p.scales[i] + b + ahead), _MM_HINT_T1);
    const __m256 ws =
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.scales[i] + b)));
    _mm256_storeu_ps(out[i], _mm256_mul_ps(ws, x));
  }
}

// AVX2 without VNNI: each block's weights widened to 16 bits (sign-extended) times the
// activations' 16-bit codes (prepared as such once per token), pairs summed by vpmaddwd
// (|w·q| ≤ 127 · 32767: no overflow), then scaled in f32. R rows by T tokens, each row's block
// widened once for the T; a pair's sums run in the same order whatever R and T are. Eight
// blocks' scales are converted at once, and each row's codes are prefetched 16 KB ahead into
// L2, once per 64-byte line.
template <int R, int T>
__attribute__((target(WHALE_AVX2))) void q8_tile_avx2(const uint8_t* xp, int64_t ldx,
                                                      const Matrix& w, int64_t r, float* out,
                                                      int64_t ldo) {
  Prepared x[T];
  for (int t = 0; t < T; ++t) x[t] = view(xp + t * ldx, w.cols);
  const int64_t blocks = w.cols / kQuantBlock;
  const RowPointers<R> p(w, r);
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  }
  alignas(32) float scales[T][R][8];
  for (int64_t b = 0; b < blocks; ++b) {
    if (b % 8 == 0) {
      for (int t = 0; t < T; ++t)
        block_scales_avx2<R>(p, x[t].scales, b, blocks, kPrefetch / kQuantBlock, scales[t]);
    }
    for (int i = 0; i < R; ++i) {
      const uint8_t* row = p.data[i] + b * kQuantBlock;
      if (b % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetch), _MM_HINT_T1);
      const __m256i wa =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
      const __m256i wb =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16)));
      for (int t = 0; t < T; ++t) {
        const int16_t* codes = x[t].codes + b * kQuantBlock;
        const __m256i d = _mm256_add_epi32(_mm256_madd_epi16(wa, codes16_avx2(codes)),
                                           _mm256_madd_epi16(wb, codes16_avx2(codes + 16)));
        acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d),
                                    _mm256_broadcast_ss(&scales[t][i][b % 8]), acc[i][t]);
      }
    }
  }
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) out[t * ldo + i] = hsum256(acc[i][t]);
  }
}

// q4 on AVX2: the codes looked up (one byte shuffle per nibble half) as their levels, and the
// activations' signs moved onto them (vpsignb), so that vpmaddubsw multiplies |x| (unsigned,
// once per token for all R rows) by ±w: each pair's sum is at most 2 · 127 · 127, no saturation.
// (|w| times the signed x instead took two more shuffles per row: from L3, 56 expert matrices in
// the lab, it ran at 33.2-34.1 GB/s on Zen 4, this at 34.7-36.5.)
// vpmaddwd by ones widens the pairs to 32 bits. Two blocks (32 bytes of codes) per step, over
// the full groups (kernel order); the blocks after them in scalar code. R rows by T tokens, each
// row's codes looked up once for the T; a pair's sums run in the same order whatever R and T are.
template <int R, int T>
__attribute__((target(WHALE_AVX2))) void q4_tile_avx2(const uint8_t* xp, int64_t ldx,
                                                      const Matrix& w, int64_t r, float* out,
                                                      int64_t ldo) {
  Prepared x[T];
  for (int t = 0; t < T; ++t) x[t] = view(xp + t * ldx, w.cols);
  const int64_t grouped = w.cols / kGroup * 4;  // blocks in full groups: a multiple of 4
  const RowPointers<R> p(w, r);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m128i signed_levels = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ops::kQ4Levels));
  const __m256i levels = _mm256_broadcastsi128_si256(signed_levels);
  const __m256i ones = _mm256_set1_epi16(1);
  // Lanes 0-3 hold block b, lanes 4-7 block b + 1.
  const __m256i halves = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  }
  alignas(32) float scales[T][R][8];
  for (int64_t b = 0; b < grouped; b += 2) {
    if (b % 8 == 0) {
      for (int t = 0; t < T; ++t)
        block_scales_avx2<R>(p, x[t].scales, b, grouped, kPrefetch / kHalf, scales[t]);
    }
    // The activations of block b's low nibbles (its first 16 columns) at `first`, block b + 1's
    // 16 after them; their high nibbles' 64 further.
    const int64_t first = (b / 4) * kGroup + (b % 4) * kHalf;
    __m256i xl[T], xh[T], al[T], ah[T];
    for (int t = 0; t < T; ++t) {
      xl[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].hi + first));
      xh[t] =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].hi + first + 2 * kQuantBlock));
      al[t] = _mm256_abs_epi8(xl[t]);
      ah[t] = _mm256_abs_epi8(xh[t]);
    }
    for (int i = 0; i < R; ++i) {
      const uint8_t* row = p.data[i] + b * kHalf;
      if (b % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetch), _MM_HINT_T1);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
      const __m256i low = _mm256_and_si256(v, nibble);
      const __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
      const __m256i low_w = _mm256_shuffle_epi8(levels, low);
      const __m256i high_w = _mm256_shuffle_epi8(levels, high);
      for (int t = 0; t < T; ++t) {
        const __m256i pl = _mm256_maddubs_epi16(al[t], _mm256_sign_epi8(low_w, xl[t]));
        const __m256i ph = _mm256_maddubs_epi16(ah[t], _mm256_sign_epi8(high_w, xh[t]));
        const __m256i d =
            _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones));
        const __m256 pair = _mm256_castps128_ps256(_mm_castsi128_ps(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&scales[t][i][b % 8]))));
        acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_permutevar8x32_ps(pair, halves),
                                    acc[i][t]);
      }
    }
  }
  // The blocks past the full groups, if any (a call per row and token costs 4% of prefill).
  const bool tail = grouped < w.cols / kQuantBlock;
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) {
      float sum = hsum256(acc[i][t]);
      if (tail) sum += q4_blocks(x[t], w, r + i, grouped, w.cols / kQuantBlock);
      out[t * ldo + i] = sum;
    }
  }
}

#define WHALE_QUANT_DISPATCH(kernel, T_MAX)                                                     \
  template <int R, int T>                                                                        \
  struct kernel##_entry {                                                                        \
    static void run(const uint8_t* xp, int64_t ldx, const Matrix& w, int64_t r, float* out,      \
                    int64_t ldo) {                                                               \
      kernel<R, T>(xp, ldx, w, r, out, ldo);                                                     \
    }                                                                                            \
  };                                                                                             \
  void kernel##_rows(const uint8_t* xp, int64_t ldx, int tokens, const Matrix& w, int64_t r,     \
                     int rows, float* out, int64_t ldo) {                                        \
    static constexpr auto table = tile_table<kernel##_entry, T_MAX>();                           \
    for (int t = 0; t < tokens; t += T_MAX) {                                                    \
      const int count = std::min(T_MAX, tokens - t);                                             \
      table[static_cast<size_t>((rows - 1) * T_MAX + count - 1)](xp + t * ldx, ldx, w, r,        \
                                                                 out + t * ldo, ldo);            \
    }                                                                                            \
  }
WHALE_QUANT_DISPATCH(q4_tile_avx512, 2)
WHALE_QUANT_DISPATCH(q4_tile_avx512_vbmi, 2)
WHALE_QUANT_DISPATCH(q8_tile_avx512, 2)
WHALE_QUANT_DISPATCH(q4_tile_avx2, 2)
WHALE_QUANT_DISPATCH(q8_tile_avx2, 2)
#undef WHALE_QUANT_DISPATCH

// Eight independent accumulators in named registers: held in an array, they were kept on the
// stack with a store and a reload around every product, and the loop measured the store
// forwarding (about a third of the products' rate) instead of the products.
__attribute__((target(WHALE_AVX512_VNNI))) int32_t dot_loop_avx512(int64_t iters) {
  const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
          a7 = a0;
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm512_dpbusd_epi32(a0, u, v);
    a1 = _mm512_dpbusd_epi32(a1, u, v);
    a2 = _mm512_dpbusd_epi32(a2, u, v);
    a3 = _mm512_dpbusd_epi32(a3, u, v);
    a4 = _mm512_dpbusd_epi32(a4, u, v);
    a5 = _mm512_dpbusd_epi32(a5, u, v);
    a6 = _mm512_dpbusd_epi32(a6, u, v);
    a7 = _mm512_dpbusd_epi32(a7, u, v);
    __asm__ volatile(""
                     : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),
                       "+v"(a7));
  }
  // Combined without scalar arithmetic: the sums wrap, which vector lanes may do.
  const __m512i s =
      _mm512_xor_si512(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)),
                       _mm512_xor_si512(_mm512_xor_si512(a4, a5), _mm512_xor_si512(a6, a7)));
  return _mm_cvtsi128_si32(_mm512_castsi512_si128(s));
}

// AVX2 has no accumulating byte product: vpmaddubsw, then vpmaddwd to 32 bits, and an add. Their
// inputs pass through the barrier too, or the compiler computes the products once, outside the
// loop. Four chains (16 registers hold four accumulators and their inputs).
__attribute__((target(WHALE_AVX2))) int32_t dot_loop_avx2(int64_t iters) {
  const __m256i v = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  __m256i u0 = _mm256_set1_epi8(3), u1 = u0, u2 = u0, u3 = u0;
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(u0, v), ones));
    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(u1, v), ones));
    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_maddubs_epi16(u2, v), ones));
    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_maddubs_epi16(u3, v), ones));
    __asm__ volatile(""
                     : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(u0), "+x"(u1), "+x"(u2),
                       "+x"(u3));
  }
  const __m256i s = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
  return _mm_cvtsi128_si32(_mm256_castsi256_si128(s));
}

#endif

}  // namespace

bool has_avx512_vnni() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

int64_t int8_dot_ops_per_iter(Isa isa) {
  if (has_avx512(isa) && has_avx512_vnni()) return 8 * 64 * 2;  // 8 chains of 64 byte products
  if (has_avx512(isa) || isa == Isa::kAvx2) return 4 * 32 * 2;  // 4 chains of 32
  return 8 * 2;
}

int32_t int8_dot_throughput_loop(Isa isa, int64_t iters) {
#if defined(__x86_64__)
  if (has_avx512(isa) && has_avx512_vnni()) return dot_loop_avx512(iters);
  if (has_avx512(isa) || isa == Isa::kAvx2) return dot_loop_avx2(iters);
#endif
  int32_t acc[8] = {};
  volatile int8_t a = 3, b = -2;
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& x : acc) x += a * b;
  }
  return acc[0] + acc[7];
}

PreparedLayout prepared_layout(int64_t k) {
  PreparedLayout l;
  const int64_t blocks = k / kQuantBlock;
  l.hi = 0;
  l.lo = align64(k);
  l.scales = l.lo + align64(k);
  l.zero = l.scales + align64(blocks * 4);
  l.codes = l.zero + align64(k / kGroup * 32 * 4);
  l.bytes = l.codes + align64(k * 2);
  return l;
}

namespace {

// code_max 32767: q = 256·hi + lo; 127: q = hi, lo = 0.
inline __attribute__((always_inline)) float quantize_block_portable(const float* x, int8_t* hi,
                                                                    uint8_t* lo, int32_t code_max) {
  float amax = 0;
  bool finite = true;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    amax = std::max(amax, std::fabs(x[i]));
    finite &= std::fabs(x[i]) < INFINITY;  // false for NaN too
  }
  if (!finite) {  // NaN or inf in: codes 0, and a NaN scale carries it on
    std::fill_n(hi, kQuantBlock, int8_t{0});
    std::fill_n(lo, kQuantBlock, uint8_t{0});
    return NAN;
  }
  const float limit = static_cast<float>(code_max);
  const float scale = amax / limit;
  const float inv = amax > 0 ? limit / amax : 0.0f;
  // Adding and removing 1.5·2^23 rounds to the nearest integer, ties to even, as lrintf does
  // for |v| < 2^22, in a form the compiler vectorises.
  constexpr float kRound = 12582912.0f;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    const float v = std::clamp(x[i] * inv, -limit, limit);
    const auto q = static_cast<int32_t>((v + kRound) - kRound);
    const bool wide = code_max > kCode8Max;
    hi[i] = static_cast<int8_t>(wide ? q >> 8 : q);  // floor(q / 256): arithmetic shift
    lo[i] = static_cast<uint8_t>(wide ? q & 0xFF : 0);
  }
  return scale;
}

#if defined(__x86_64__)
// The same code in AVX2's 8 lanes (without FMA, so nothing is fused): the compiler left to
// SSE2 made it 2% of AVX2 prefill.
__attribute__((target("avx2"))) float quantize_block_avx2(const float* x, int8_t* hi, uint8_t* lo,
                                                          int32_t code_max) {
  return quantize_block_portable(x, hi, lo, code_max);
}
#endif

float quantize_block(const float* x, int8_t* hi, uint8_t* lo, int32_t* hi_sum, Isa isa,
                     int32_t code_max) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return quantize_block_avx512(x, hi, lo, hi_sum, code_max);
  const float scale = isa == Isa::kAvx2 ? quantize_block_avx2(x, hi, lo, code_max)
                                        : quantize_block_portable(x, hi, lo, code_max);
#else
  (void)isa;
  const float scale = quantize_block_portable(x, hi, lo, code_max);
#endif
  int32_t s = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) s += hi[i];
  *hi_sum = s;
  return scale;
}

}  // namespace

float quantize_activations16(const float* x, int8_t* hi, uint8_t* lo, int32_t* hi_sum, Isa isa) {
  return quantize_block(x, hi, lo, hi_sum, isa, kCodeMax);
}

void prepare_quantized(const float* x, int64_t k, WeightFormat format, uint8_t* out, Isa isa) {
  const PreparedLayout l = prepared_layout(k);
  auto* hi = reinterpret_cast<int8_t*>(out + l.hi);
  uint8_t* lo = out + l.lo;
  auto* scales = reinterpret_cast<float*>(out + l.scales);
  auto* zero = reinterpret_cast<int32_t*>(out + l.zero);
  const int64_t blocks = k / kQuantBlock, full_groups = k / kGroup;
  int8_t h[kQuantBlock];
  uint8_t o[kQuantBlock];
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t sum;  // Σ hi of the block, for the zero-point corrections
    scales[b] = quantize_block(x + b * kQuantBlock, h, o, &sum, isa,
                               format == WeightFormat::kQ4 ? kCode8Max : kCodeMax);
    if (format == WeightFormat::kQ4 && b / 4 < full_groups) {
      const int64_t first = prepared_position(format, k, b * kQuantBlock);
      const int64_t second = prepared_position(format, k, b * kQuantBlock + kHalf);
      std::memcpy(hi + first, h, kHalf);
      std::memcpy(hi + second, h + kHalf, kHalf);
      std::memcpy(lo + first, o, kHalf);
      std::memcpy(lo + second, o + kHalf, kHalf);
      // Four VNNI lanes per block; together they subtract 128 · Σ codes (the levels come biased).
      for (int j = 0; j < 4; ++j) zero[(b / 4) * 32 + (b % 4) * 4 + j] = -32 * sum;
    } else {
      std::memcpy(hi + b * kQuantBlock, h, kQuantBlock);
      std::memcpy(lo + b * kQuantBlock, o, kQuantBlock);
      // kQ8 reads w + 128 as unsigned: eight VNNI lanes per block together subtract 128 · Σhi.
      if (format == WeightFormat::kQ8 && b / 4 < full_groups) {
        for (int j = 0; j < 8; ++j) zero[(b / 4) * 32 + (b % 4) * 8 + j] = -16 * sum;
      }
    }
  }
  auto* codes = reinterpret_cast<int16_t*>(out + l.codes);
  for (int64_t i = 0; i < blocks * kQuantBlock; ++i)
    codes[i] = static_cast<int16_t>(format == WeightFormat::kQ4 ? hi[i] : hi[i] * 256 + lo[i]);
}

bool has_avx512_vbmi() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return has_avx512_vnni() && __builtin_cpu_supports("avx512vbmi");
#else
  return false;
#endif
}

QuantRowsFn quant_rows_kernel(Isa isa, WeightFormat format, bool vbmi) {
  vbmi = vbmi && has_avx512_vbmi();
#if defined(__x86_64__)
  if (has_avx512(isa) && has_avx512_vnni()) {
    if (format == WeightFormat::kQ4 && vbmi) return QuantRowsFn{q4_tile_avx512_vbmi_rows};
    return format == WeightFormat::kQ4 ? QuantRowsFn{q4_tile_avx512_rows}
                                        : QuantRowsFn{q8_tile_avx512_rows};
  }
  if (has_avx512(isa) || isa == Isa::kAvx2)
    return format == WeightFormat::kQ4 ? QuantRowsFn{q4_tile_avx2_rows}
                                        : QuantRowsFn{q8_tile_avx2_rows};
#else
  (void)vbmi;
#endif
  return format == WeightFormat::kQ4 ? QuantRowsFn{rows_portable<q4_blocks>}
                                     : QuantRowsFn{rows_portable<q8_blocks>};
}

}  // namespace whale::cpu
