// e^x for x ≤ 0 in plain arithmetic and in AVX2 / AVX-512 lanes: the softmaxes of attention
// and SwiGLU's sigmoid share it. For the kernel files (each function one instruction set, by
// target attributes).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "backends/cpu/simd.h"

namespace whale::cpu {

// 2^f on [0, 1), highest power first.
constexpr float kExp2Poly[7] = {1.535336188319500e-4f,
                                1.339887440266574e-3f,
                                9.618437357674640e-3f,
                                5.550332471162809e-2f,
                                2.402264791363012e-1f,
                                6.931472028550421e-1f,
                                1.0f};

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
  const auto bits =
      std::bit_cast<uint32_t>(p) + (static_cast<uint32_t>(static_cast<int32_t>(i)) << 23);
  return std::bit_cast<float>(bits);
}

#if defined(__x86_64__)
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
#endif

}  // namespace whale::cpu
