#include "backends/cpu/quant_kernels.h"

#include <cmath>
#include <cstring>

#include "backends/cpu/simd.h"
#include "ops/quant.h"

namespace whale::cpu {
namespace {

using ops::kQuantBlock;
using ops::Matrix;
using ops::WeightFormat;

// Columns in a group: four blocks, the unit of the wide kernels (64 bytes of 4-bit codes).
constexpr int64_t kGroup = 4 * kQuantBlock;
constexpr int64_t kHalf = kQuantBlock / 2;
// Bytes ahead of the current position that the kernels prefetch (see kBf16Prefetch).
constexpr int64_t kPrefetch = 4096;

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

struct Prepared {
  const int8_t* codes;
  const float* scales;
  const int32_t* zero;
};

Prepared view(const uint8_t* xp, int64_t k) {
  const PreparedLayout l = prepared_layout(k);
  return {reinterpret_cast<const int8_t*>(xp + l.codes),
          reinterpret_cast<const float*>(xp + l.scales),
          reinterpret_cast<const int32_t*>(xp + l.zero)};
}

inline float scale_at(const Matrix& w, int64_t r, int64_t b) {
  uint16_t h;
  std::memcpy(&h, static_cast<const uint8_t*>(w.scale) + ((w.row_offset + r) * w.scale_cols + b) * 2,
              2);
  return f16_to_f32(h);
}

inline const uint8_t* row_data(const Matrix& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * w.row_bytes();
}

// Σ over blocks [b0, b1) of row r, in block order: blocks outside full groups are in natural
// order in both the codes and the activations. `grouped` says whether full groups of kQ4 are in
// the kernel order.
float q8_blocks(const Prepared& x, const Matrix& w, int64_t r, int64_t b0, int64_t b1) {
  const auto* q = reinterpret_cast<const int8_t*>(row_data(w, r));
  float acc = 0;
  for (int64_t b = b0; b < b1; ++b) {
    int32_t dot = 0;
    for (int64_t i = b * kQuantBlock; i < (b + 1) * kQuantBlock; ++i) dot += q[i] * x.codes[i];
    acc += scale_at(w, r, b) * x.scales[b] * static_cast<float>(dot);
  }
  return acc;
}

float q4_blocks(const Prepared& x, const Matrix& w, int64_t r, int64_t b0, int64_t b1) {
  const uint8_t* p = row_data(w, r);
  const int64_t full_groups = w.cols / kGroup;
  float acc = 0;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* bytes = p + b * kHalf;
    // Where the activations of this block's low and high halves are.
    const int8_t *lo, *hi;
    if (b / 4 < full_groups) {
      const int64_t g = b / 4, j = b % 4;
      lo = x.codes + g * kGroup + j * kHalf;
      hi = lo + 2 * kQuantBlock;
    } else {
      lo = x.codes + b * kQuantBlock;
      hi = lo + kHalf;
    }
    int32_t dot = 0;
    for (int64_t i = 0; i < kHalf; ++i) {
      dot += ops::kQ4Levels[bytes[i] & 0xF] * lo[i] + ops::kQ4Levels[bytes[i] >> 4] * hi[i];
    }
    acc += scale_at(w, r, b) * x.scales[b] * static_cast<float>(dot);
  }
  return acc;
}

void q8_rows_portable(const uint8_t* xp, const Matrix& w, int64_t r, int rows, float* out) {
  const Prepared x = view(xp, w.cols);
  for (int i = 0; i < rows; ++i) out[i] = q8_blocks(x, w, r + i, 0, w.cols / kQuantBlock);
}

void q4_rows_portable(const uint8_t* xp, const Matrix& w, int64_t r, int rows, float* out) {
  const Prepared x = view(xp, w.cols);
  for (int i = 0; i < rows; ++i) out[i] = q4_blocks(x, w, r + i, 0, w.cols / kQuantBlock);
}

#if defined(__x86_64__)

#define WHALE_AVX512_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma"

// ops::kQ4Levels + 128 (as unsigned bytes) in every 128-bit lane, for byte shuffles.
__attribute__((target(WHALE_AVX512_VNNI))) inline __m512i q4_levels_biased_512() {
  alignas(16) uint8_t t[16];
  for (int i = 0; i < 16; ++i) t[i] = static_cast<uint8_t>(ops::kQ4Levels[i] + 128);
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

// The codes and f16 scales of rows r..r+R-1.
template <int R>
struct RowPointers {
  const uint8_t* data[R];
  const uint16_t* scales[R];
  RowPointers(const Matrix& w, int64_t r) {
    for (int i = 0; i < R; ++i) {
      data[i] = row_data(w, r + i);
      scales[i] = static_cast<const uint16_t*>(w.scale) + (w.row_offset + r + i) * w.scale_cols;
    }
  }
};

// Per group of 128 columns and row: 64 bytes of nibbles, unpacked into the low nibbles
// (columns 32j + i of block j, i < 16, in bytes 16j + i) and the high ones (columns 32j + 16 + i)
// and looked up (one byte shuffle each) as their level + 128, an unsigned byte, then multiplied
// by activations prepared in that order. VNNI lane l then holds block l / 4, so the four block
// scales are spread over lanes with one permute; the + 128 is taken off by starting the integer
// sums from the prepared per-lane correction (−128 · Σx over each block's four lanes).
// The body of both versions, LOOKUP(v) setting lo and hi from the bytes v.
#define WHALE_Q4_ROWS_AVX512_BODY(LOOKUP)                                                         \
  {                                                                                               \
    const Prepared x = view(xp, w.cols);                                                          \
    const int64_t groups = w.cols / kGroup;                                                       \
    const RowPointers<R> p(w, r);                                                                 \
    __m512 acc[R];                                                                                \
    for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();                                     \
    const __m512i nibble = _mm512_set1_epi8(0x0F);                                                \
    const __m512i levels = q4_levels_biased_512();                                                \
    const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);      \
    for (int64_t g = 0; g < groups; ++g) {                                                        \
      const __m512i xlo = _mm512_loadu_si512(x.codes + g * kGroup);                               \
      const __m512i xhi = _mm512_loadu_si512(x.codes + g * kGroup + 64);                          \
      const __m512i zero = _mm512_loadu_si512(x.zero + g * 32);                                   \
      const __m128 xs = _mm_loadu_ps(x.scales + g * 4);                                           \
      for (int i = 0; i < R; ++i) {                                                               \
        _mm_prefetch(reinterpret_cast<const char*>(p.data[i] + g * 64 + kPrefetch), _MM_HINT_T0); \
        const __m512i v = _mm512_loadu_si512(p.data[i] + g * 64);                                 \
        __m512i lo, hi;                                                                           \
        LOOKUP(v)                                                                                 \
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, xlo), hi, xhi);     \
        const __m128 ws =                                                                         \
            _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.scales[i] + g * 4))); \
        const __m512 s =                                                                          \
            _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(ws, xs)));            \
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[i]);                             \
      }                                                                                           \
    }                                                                                             \
    const bool tail = groups * 4 < w.cols / kQuantBlock;                                          \
    for (int i = 0; i < R; ++i) {                                                                 \
      out[i] = _mm512_reduce_add_ps(acc[i]);                                                      \
      if (tail) out[i] += q4_blocks(x, w, r + i, groups * 4, w.cols / kQuantBlock);               \
    }                                                                                             \
  }
#define WHALE_Q4_LOOKUP_SHUFFLE(v)                               \
  lo = _mm512_shuffle_epi8(levels, _mm512_and_si512(v, nibble)); \
  hi = _mm512_shuffle_epi8(levels, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
// With VBMI, a 64-entry byte permute reads only an index's low 6 bits: the 16 levels repeated
// four times make it ignore bits 4-5, so neither nibble needs masking.
#define WHALE_Q4_LOOKUP_VBMI(v)            \
  (void)nibble;                            \
  lo = _mm512_permutexvar_epi8(v, levels); \
  hi = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), levels);

template <int R>
__attribute__((target(WHALE_AVX512_VNNI))) void q4_rows_avx512(const uint8_t* xp, const Matrix& w,
                                                               int64_t r, float* out)
    WHALE_Q4_ROWS_AVX512_BODY(WHALE_Q4_LOOKUP_SHUFFLE) template <int R>
    __attribute__((target(WHALE_AVX512_VNNI ",avx512vbmi"))) void q4_rows_avx512_vbmi(
        const uint8_t* xp, const Matrix& w, int64_t r, float* out)
        WHALE_Q4_ROWS_AVX512_BODY(WHALE_Q4_LOOKUP_VBMI)
#undef WHALE_Q4_LOOKUP_VBMI
#undef WHALE_Q4_LOOKUP_SHUFFLE
#undef WHALE_Q4_ROWS_AVX512_BODY

    // int8 × int8 with VNNI (unsigned × signed): w + 128 (w with its top bit flipped) times x, the
    // sums started from the prepared −128 · Σx so that they come out as Σ w·x.
    template <int R>
    __attribute__((target(WHALE_AVX512_VNNI))) void q8_rows_avx512(const uint8_t* xp,
                                                                   const Matrix& w, int64_t r,
                                                                   float* out) {
  const Prepared x = view(xp, w.cols);
  const int64_t groups = w.cols / kGroup;
  const RowPointers<R> p(w, r);
  const uint8_t* const* rows = p.data;
  const uint16_t* const* scales = p.scales;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const __m512i first = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i second = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i x0 = _mm512_loadu_si512(x.codes + g * kGroup);
    const __m512i x1 = _mm512_loadu_si512(x.codes + g * kGroup + 64);
    const __m512i z0 = _mm512_loadu_si512(x.zero + g * 32);
    const __m512i z1 = _mm512_loadu_si512(x.zero + g * 32 + 16);
    const __m128 xs = _mm_loadu_ps(x.scales + g * 4);
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + g * kGroup + kPrefetch), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + g * kGroup + 64 + kPrefetch),
                   _MM_HINT_T0);
      const __m512i v0 = _mm512_loadu_si512(rows[i] + g * kGroup);
      const __m512i v1 = _mm512_loadu_si512(rows[i] + g * kGroup + 64);
      const __m512i d0 = _mm512_dpbusd_epi32(z0, _mm512_xor_si512(v0, flip), x0);
      const __m512i d1 = _mm512_dpbusd_epi32(z1, _mm512_xor_si512(v1, flip), x1);
      const __m128 ws = _mm_cvtph_ps(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales[i] + g * 4)));
      const __m512 s = _mm512_castps128_ps512(_mm_mul_ps(ws, xs));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(first, s), acc[i]);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(second, s), acc[i]);
    }
  }
  const bool tail = groups * 4 < w.cols / kQuantBlock;
  for (int i = 0; i < R; ++i) {
    out[i] = _mm512_reduce_add_ps(acc[i]);
    if (tail) out[i] += q8_blocks(x, w, r + i, groups * 4, w.cols / kQuantBlock);
  }
}

// ops::quantize_activation_block in AVX-512, with the same arithmetic in the same order (max of
// |x|, one division each for the scale and its inverse, multiply, clamp, round by adding and
// removing 1.5·2^23), so the codes and scale are bit for bit the same; also returns Σ codes.
__attribute__((target("avx512f,avx512bw"))) inline __m512i round_codes(__m512 v, __m512 inv) {
  v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), _mm512_set1_ps(-127.0f)),
                    _mm512_set1_ps(127.0f));
  const __m512 round = _mm512_set1_ps(12582912.0f);
  return _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(v, round), round));
}

__attribute__((target("avx512f,avx512bw"))) float quantize_block_avx512(const float* x,
                                                                       int8_t* q, int32_t* sum) {
  const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x)), b = _mm512_abs_ps(_mm512_loadu_ps(x + 16));
  const __m512 inf = _mm512_set1_ps(INFINITY);
  if ((_mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ) & _mm512_cmp_ps_mask(b, inf, _CMP_LT_OQ)) != 0xFFFF) {
    std::memset(q, 0, kQuantBlock);  // as the scalar version: codes 0, a NaN scale
    *sum = 0;
    return NAN;
  }
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
  const float scale = amax / 127.0f;
  const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
  const __m512i ca = round_codes(_mm512_loadu_ps(x), inv);
  const __m512i cb = round_codes(_mm512_loadu_ps(x + 16), inv);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(ca));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtepi32_epi8(cb));
  // Lanes hold -127..127: the sum of 16 cannot overflow.
  *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(ca, cb));
  return scale;
}

#define WHALE_AVX2 "avx2,fma,f16c"

__attribute__((target(WHALE_AVX2))) inline float hsum256(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// One block per step: 16-bit products of |w| and sign-moved x (no saturation: |w| ≤ 128,
// |x| ≤ 127), widened to 32 bits, scaled in f32.
template <int R>
__attribute__((target(WHALE_AVX2))) void q8_rows_avx2(const uint8_t* xp, const Matrix& w,
                                                      int64_t r, float* out) {
  const Prepared x = view(xp, w.cols);
  const int64_t blocks = w.cols / kQuantBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < R; ++i) {
    const uint8_t* row = row_data(w, r + i);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(row + b * kQuantBlock + kPrefetch), _MM_HINT_T0);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kQuantBlock));
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.codes + b * kQuantBlock));
      const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(xv, v));
      const __m256 d = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
      acc = _mm256_fmadd_ps(d, _mm256_set1_ps(scale_at(w, r + i, b) * x.scales[b]), acc);
    }
    out[i] = hsum256(acc);
  }
}

// As q8_rows_avx2, with the codes first looked up as their signed levels (one byte shuffle).
template <int R>
__attribute__((target(WHALE_AVX2))) void q4_rows_avx2(const uint8_t* xp, const Matrix& w,
                                                      int64_t r, float* out) {
  const Prepared x = view(xp, w.cols);
  const int64_t groups = w.cols / kGroup;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i nibble = _mm_set1_epi8(0x0F);
  const __m256i levels = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(ops::kQ4Levels)));
  for (int i = 0; i < R; ++i) {
    const uint8_t* row = row_data(w, r + i);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < groups * 4; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(row + b * kHalf + kPrefetch), _MM_HINT_T0);
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * kHalf));
      const __m256i codes = _mm256_shuffle_epi8(
          levels,
          _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), nibble), _mm_and_si128(v, nibble)));
      const int8_t* lo = x.codes + (b / 4) * kGroup + (b % 4) * kHalf;
      const __m256i xv =
          _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo + 2 * kQuantBlock)),
                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
      const __m256i p =
          _mm256_maddubs_epi16(_mm256_sign_epi8(codes, codes), _mm256_sign_epi8(xv, codes));
      const __m256 d = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
      acc = _mm256_fmadd_ps(d, _mm256_set1_ps(scale_at(w, r + i, b) * x.scales[b]), acc);
    }
    out[i] = hsum256(acc) + q4_blocks(x, w, r + i, groups * 4, w.cols / kQuantBlock);
  }
}

#define WHALE_QUANT_DISPATCH(kernel)                                                       \
  void kernel(const uint8_t* xp, const Matrix& w, int64_t r, int rows, float* out) {       \
    switch (rows) {                                                                        \
      case 4:                                                                              \
        return kernel<4>(xp, w, r, out);                                                   \
      case 3:                                                                              \
        return kernel<3>(xp, w, r, out);                                                   \
      case 2:                                                                              \
        return kernel<2>(xp, w, r, out);                                                   \
      default:                                                                             \
        return kernel<1>(xp, w, r, out);                                                   \
    }                                                                                      \
  }
WHALE_QUANT_DISPATCH(q4_rows_avx512)
WHALE_QUANT_DISPATCH(q4_rows_avx512_vbmi)
WHALE_QUANT_DISPATCH(q8_rows_avx512)
WHALE_QUANT_DISPATCH(q4_rows_avx2)
WHALE_QUANT_DISPATCH(q8_rows_avx2)
#undef WHALE_QUANT_DISPATCH

__attribute__((target(WHALE_AVX512_VNNI))) int32_t dot_loop_avx512(int64_t iters) {
  __m512i acc[8];
  for (auto& a : acc) a = _mm512_setzero_si512();
  const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& a : acc) a = _mm512_dpbusd_epi32(a, u, v);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]), "+v"(acc[4]),
                     "+v"(acc[5]), "+v"(acc[6]), "+v"(acc[7]));
  }
  // Combined without scalar arithmetic: the sums wrap, which vector lanes may do.
  __m512i s = acc[0];
  for (int j = 1; j < 8; ++j) s = _mm512_xor_si512(s, acc[j]);
  return _mm_cvtsi128_si32(_mm512_castsi512_si128(s));
}

__attribute__((target(WHALE_AVX2))) int32_t dot_loop_avx2(int64_t iters) {
  __m256i acc[8];
  for (auto& a : acc) a = _mm256_setzero_si256();
  const __m256i u = _mm256_set1_epi8(3), v = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& a : acc) a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), ones));
    __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]), "+x"(acc[4]),
                     "+x"(acc[5]), "+x"(acc[6]), "+x"(acc[7]));
  }
  __m256i s = acc[0];
  for (int j = 1; j < 8; ++j) s = _mm256_add_epi32(s, acc[j]);
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  return lanes[0];
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
  if (has_avx512(isa) && has_avx512_vnni()) return 8 * 64 * 2;
  if (has_avx512(isa) || isa == Isa::kAvx2) return 8 * 32 * 2;
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
  l.codes = 0;
  l.scales = align64(k);
  l.zero = l.scales + align64(blocks * 4);
  l.bytes = l.zero + align64(k / kGroup * 32 * 4);
  return l;
}

float quantize_activations(const float* x, int8_t* q, int32_t* sum, Isa isa) {
#if defined(__x86_64__)
  if (has_avx512(isa)) return quantize_block_avx512(x, q, sum);
#else
  (void)isa;
#endif
  const float scale = ops::quantize_activation_block(x, q);
  int32_t s = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) s += q[i];
  *sum = s;
  return scale;
}

void prepare_quantized(const float* x, int64_t k, WeightFormat format, uint8_t* out, Isa isa) {
  const PreparedLayout l = prepared_layout(k);
  auto* codes = reinterpret_cast<int8_t*>(out + l.codes);
  auto* scales = reinterpret_cast<float*>(out + l.scales);
  auto* zero = reinterpret_cast<int32_t*>(out + l.zero);
  const int64_t blocks = k / kQuantBlock, full_groups = k / kGroup;
  int8_t q[kQuantBlock];
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t sum;  // Σ codes of the block, for the zero-point corrections
    scales[b] = quantize_activations(x + b * kQuantBlock, q, &sum, isa);
    if (format == WeightFormat::kQ4 && b / 4 < full_groups) {
      int8_t* lo = codes + (b / 4) * kGroup + (b % 4) * kHalf;
      std::memcpy(lo, q, kHalf);
      std::memcpy(lo + 2 * kQuantBlock, q + kHalf, kHalf);
      // Four VNNI lanes per block; together they subtract 128 · Σx (the levels come biased).
      for (int j = 0; j < 4; ++j) zero[(b / 4) * 32 + (b % 4) * 4 + j] = -32 * sum;
    } else {
      std::memcpy(codes + b * kQuantBlock, q, kQuantBlock);
      // kQ8 reads w + 128 as unsigned: eight VNNI lanes per block together subtract 128 · Σx.
      if (format == WeightFormat::kQ8 && b / 4 < full_groups) {
        for (int j = 0; j < 8; ++j) zero[(b / 4) * 32 + (b % 4) * 8 + j] = -16 * sum;
      }
    }
  }
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
    if (format == WeightFormat::kQ4 && vbmi) return QuantRowsFn{q4_rows_avx512_vbmi};
    return format == WeightFormat::kQ4 ? QuantRowsFn{q4_rows_avx512} : QuantRowsFn{q8_rows_avx512};
  }
  if (has_avx512(isa) || isa == Isa::kAvx2)
    return format == WeightFormat::kQ4 ? QuantRowsFn{q4_rows_avx2} : QuantRowsFn{q8_rows_avx2};
#else
  (void)vbmi;
#endif
  return format == WeightFormat::kQ4 ? QuantRowsFn{q4_rows_portable}
                                      : QuantRowsFn{q8_rows_portable};
}

}  // namespace whale::cpu
