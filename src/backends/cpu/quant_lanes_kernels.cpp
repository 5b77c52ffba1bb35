#include "backends/cpu/quant_lanes_kernels.h"

#include <algorithm>
#include <cstring>

#include "backends/cpu/quant_kernels.h"
#include "backends/cpu/quant_rows.h"
#include "backends/cpu/simd.h"
#include "ops/quant.h"

namespace whale::cpu {
namespace {

using ops::kQuantBlock;
using ops::Matrix;
using ops::WeightFormat;
using quant::kHalf;
using quant::kPrefetch;
using quant::prepared_position;
using quant::RowPointers;

// Where the packed parts of 16 tokens lie (bytes from the start): hi is [k / 4][16 tokens][4] of
// hi + 128 as unsigned bytes, lo (kQ8 only) the same for lo, scales f32 [k / 32][16 tokens].
struct LanesLayout {
  int64_t hi = 0, lo = 0, scales = 0, bytes = 0;
};

LanesLayout lanes_layout(int64_t k, WeightFormat format) {
  LanesLayout l;
  l.lo = k * 16;
  l.scales = format == WeightFormat::kQ8 ? k * 32 : k * 16;
  l.bytes = l.scales + k / kQuantBlock * 16 * 4;
  return l;
}

#if defined(__x86_64__)

// The activations are the unsigned side of VNNI's byte products, so hi goes in as hi + 128; the
// weights, broadcast 4 at a time, are signed as stored (q8) or as their levels (q4). The + 128
// comes off per block and row: 32768 · Σ w for q8 (q + 32768 = 256 · (hi + 128) + lo), 128 · Σ
// levels for q4.

__attribute__((target(WHALE_AVX512_VNNI))) void pack_lanes_avx512(const uint8_t* xp, int64_t ldx,
                                                                  int64_t k, WeightFormat format,
                                                                  uint8_t* out) {
  const PreparedLayout l = prepared_layout(k);
  const __m512i index =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(static_cast<int>(ldx)));
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const bool q8 = format == WeightFormat::kQ8;
  const LanesLayout lanes = lanes_layout(k, format);
  auto* hi = out + lanes.hi;
  auto* lo = out + lanes.lo;
  auto* scales = reinterpret_cast<float*>(out + lanes.scales);
  for (int64_t g = 0; g < k / 4; ++g) {
    const int64_t at = prepared_position(format, k, g * 4);
    const __m512i h = _mm512_i32gather_epi32(index, xp + l.hi + at, 1);
    _mm512_storeu_si512(hi + g * 64, _mm512_xor_si512(h, bias));
    if (q8) _mm512_storeu_si512(lo + g * 64, _mm512_i32gather_epi32(index, xp + l.lo + at, 1));
  }
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    _mm512_storeu_ps(scales + b * 16, _mm512_i32gather_ps(index, xp + l.scales + b * 4, 1));
  }
}

// Σ over 32 signed bytes (Σ (v + 128) by byte sums of absolute differences from 0, less 4096).
__attribute__((target(WHALE_AVX512_VNNI))) inline int32_t sum_bytes(__m256i v) {
  const __m256i sad = _mm256_sad_epu8(
      _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))), _mm256_setzero_si256());
  const __m128i half = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
  return static_cast<int32_t>(
             _mm_cvtsi128_si64(_mm_add_epi64(half, _mm_unpackhi_epi64(half, half)))) -
         4096;
}

// q4 the same way with its 8-bit activation codes (one product per group), each row's block
// of codes first looked up into its 32 levels in column order.
template <int R>
__attribute__((target(WHALE_AVX512_VNNI))) void q4_lanes_avx512(const uint8_t* packed, int64_t k,
                                                                const Matrix& w, int64_t r,
                                                                float* out, int64_t ldo,
                                                                int tokens) {
  const LanesLayout l = lanes_layout(k, WeightFormat::kQ4);
  const uint8_t* xh_all = packed + l.hi;
  const auto* xscales = reinterpret_cast<const float*>(packed + l.scales);
  const RowPointers<R> p(w, r);
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const __m128i levels = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ops::kQ4Levels));
  const __m128i nibble = _mm_set1_epi8(0x0F);
  alignas(32) int8_t level_bytes[R][kQuantBlock];
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    __m512i d[R];
    int32_t sum_w[R];
    for (int i = 0; i < R; ++i) {
      const uint8_t* codes = p.data[i] + b * kHalf;
      if (b % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(codes + kPrefetch), _MM_HINT_T1);
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
      const __m128i low = _mm_shuffle_epi8(levels, _mm_and_si128(v, nibble));
      const __m128i high = _mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(v, 4), nibble));
      const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(low), high, 1);
      _mm256_store_si256(reinterpret_cast<__m256i*>(level_bytes[i]), both);
      sum_w[i] = sum_bytes(both);
      d[i] = _mm512_setzero_si512();
    }
    for (int g = 0; g < kQuantBlock / 4; ++g) {
      const __m512i xh = _mm512_loadu_si512(xh_all + (b * 8 + g) * 64);
      for (int i = 0; i < R; ++i) {
        int32_t four;
        std::memcpy(&four, level_bytes[i] + g * 4, 4);
        d[i] = _mm512_dpbusd_epi32(d[i], xh, _mm512_set1_epi32(four));
      }
    }
    const __m512 xs = _mm512_loadu_ps(xscales + b * 16);
    for (int i = 0; i < R; ++i) {
      const __m512i dot = _mm512_sub_epi32(d[i], _mm512_set1_epi32(128 * sum_w[i]));
      const __m512 s = _mm512_mul_ps(xs, _mm512_set1_ps(_cvtsh_ss(p.scales[i][b])));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) {
    alignas(64) float lane[16];
    _mm512_store_ps(lane, acc[i]);
    for (int t = 0; t < tokens; ++t) out[t * ldo + i] = lane[t];
  }
}

template <int R>
__attribute__((target(WHALE_AVX512_VNNI))) void q8_lanes_avx512(const uint8_t* packed, int64_t k,
                                                                const Matrix& w, int64_t r,
                                                                float* out, int64_t ldo,
                                                                int tokens) {
  const LanesLayout l = lanes_layout(k, WeightFormat::kQ8);
  const uint8_t* xh_all = packed + l.hi;
  const uint8_t* xl_all = packed + l.lo;
  const auto* xscales = reinterpret_cast<const float*>(packed + l.scales);
  const RowPointers<R> p(w, r);
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    __m512i dh[R], dl[R];
    for (int i = 0; i < R; ++i) dh[i] = dl[i] = _mm512_setzero_si512();
    for (int i = 0; i < R; ++i) {
      if (b % 2 == 0)
        _mm_prefetch(reinterpret_cast<const char*>(p.data[i] + b * kQuantBlock + kPrefetch),
                     _MM_HINT_T1);
    }
    for (int g = 0; g < kQuantBlock / 4; ++g) {
      const __m512i xh = _mm512_loadu_si512(xh_all + (b * 8 + g) * 64);
      const __m512i xl = _mm512_loadu_si512(xl_all + (b * 8 + g) * 64);
      for (int i = 0; i < R; ++i) {
        int32_t four;
        std::memcpy(&four, p.data[i] + b * kQuantBlock + g * 4, 4);
        const __m512i wb = _mm512_set1_epi32(four);
        dh[i] = _mm512_dpbusd_epi32(dh[i], xh, wb);
        dl[i] = _mm512_dpbusd_epi32(dl[i], xl, wb);
      }
    }
    const __m512 xs = _mm512_loadu_ps(xscales + b * 16);
    for (int i = 0; i < R; ++i) {
      const int32_t sum_w = sum_bytes(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.data[i] + b * kQuantBlock)));
      const __m512i d = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(dh[i], 8), dl[i]),
                                         _mm512_set1_epi32(32768 * sum_w));
      const __m512 s = _mm512_mul_ps(xs, _mm512_set1_ps(_cvtsh_ss(p.scales[i][b])));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) {
    alignas(64) float lane[16];
    _mm512_store_ps(lane, acc[i]);
    for (int t = 0; t < tokens; ++t) out[t * ldo + i] = lane[t];
  }
}

#endif

}  // namespace

int64_t lanes_bytes(int64_t k, WeightFormat format) { return lanes_layout(k, format).bytes; }

bool has_lanes_kernels(Isa isa) {
#if defined(__x86_64__)
  return has_avx512(isa) && has_avx512_vnni();
#else
  (void)isa;
  return false;
#endif
}

void pack_lanes(const uint8_t* xp, int64_t ldx, int64_t k, WeightFormat format, uint8_t* out) {
#if defined(__x86_64__)
  pack_lanes_avx512(xp, ldx, k, format, out);
#else
  (void)xp, (void)ldx, (void)k, (void)format, (void)out;
#endif
}

void lanes_rows(const uint8_t* packed, int64_t k, int tokens, const Matrix& w, int64_t r, int rows,
                float* out, int64_t ldo) {
#if defined(__x86_64__)
  using Kernel = void (*)(const uint8_t*, int64_t, const Matrix&, int64_t, float*, int64_t, int);
  static constexpr Kernel q8[] = {q8_lanes_avx512<1>, q8_lanes_avx512<2>, q8_lanes_avx512<3>,
                                  q8_lanes_avx512<4>};
  static constexpr Kernel q4[] = {q4_lanes_avx512<1>, q4_lanes_avx512<2>, q4_lanes_avx512<3>,
                                  q4_lanes_avx512<4>};
  const int at = std::clamp(rows, 1, 4) - 1;
  (w.format == WeightFormat::kQ4 ? q4 : q8)[at](packed, k, w, r, out, ldo, tokens);
#else
  (void)packed, (void)k, (void)tokens, (void)w, (void)r, (void)rows, (void)out, (void)ldo;
#endif
}

}  // namespace whale::cpu
