// x86 vector intrinsics for the kernel files, each compiled per instruction set with target
// attributes (never with -m flags, so the rest of the program runs anywhere).
#pragma once

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start some results from an undefined vector, which trips these.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include <array>
#include <cstddef>
#include <utility>

namespace whale::cpu {

#if defined(__x86_64__)
// The sum and the maximum of an AVX2 register's 8 lanes.
__attribute__((target("avx2"))) inline float hsum256(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}
__attribute__((target("avx2"))) inline float hmax256(__m256 v) {
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}
#endif

// The instantiations K<R, T>::run of a tile kernel for R = 1..4 rows and T = 1..T_MAX tokens,
// at index (R - 1)·T_MAX + T - 1: picked at run time by the rows and tokens left.
template <template <int, int> class K, int T_MAX, size_t... I>
constexpr auto tile_table_of(std::index_sequence<I...>) {
  return std::array{&K<static_cast<int>(I) / T_MAX + 1, static_cast<int>(I) % T_MAX + 1>::run...};
}
template <template <int, int> class K, int T_MAX>
constexpr auto tile_table() {
  return tile_table_of<K, T_MAX>(std::make_index_sequence<4 * T_MAX>());
}

}  // namespace whale::cpu
