#include "backends/cpu/amx_kernels.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "backends/cpu/quant_kernels.h"
#include "backends/cpu/simd.h"
#include "core/dtype.h"
#include "ops/quant.h"

#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define WHALE_HAVE_AMX 1
#endif

namespace whale::cpu {

#if WHALE_HAVE_AMX

namespace {

// Linux keeps the 8 KB tile state off until a process asks for it.
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

// Palette 1 with a shape per tile.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The two tile layouts: kBf16, every tile 16 × 64 bytes; kInt8, tiles 0-1 accumulators
// (16 × 64 bytes), 2-3 weights (16 rows × 32 codes: one block), 4-5 activations (8 rows of
// 16 tokens × 4 codes: the same block).
enum class TileLayout { kNone, kBf16, kInt8 };

__attribute__((target("amx-tile"))) void configure_tiles(TileLayout layout) {
  thread_local TileLayout current = TileLayout::kNone;
  if (current == layout) return;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  if (layout == TileLayout::kInt8) {
    cfg.colsb[2] = cfg.colsb[3] = 32;
    cfg.rows[4] = cfg.rows[5] = 8;
  }
  // ldtilecfg reads all 64 bytes, but its asm operand names only the first 8: keep the
  // compiler from dropping the stores to the rest.
  __asm__ volatile("" ::"m"(cfg) : "memory");
  _tile_loadconfig(&cfg);
  current = layout;
}

// The tile holds [weight row][token]; y is [token][row]: transposed in registers and written a
// token's 16 rows (one cache line) at a time, for the first n tokens.
__attribute__((target("avx512f"))) void store_transposed(const float (*tile)[16], int64_t n,
                                                         float* y, int64_t ldy) {
  const __m512i column = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64,
                                          48, 32, 16, 0);
  for (int64_t t = 0; t < n; ++t) {
    _mm512_storeu_ps(y + t * ldy, _mm512_i32gather_ps(column, &tile[0][t], 4));
  }
}

}  // namespace

bool amx_usable() {
  static const bool usable = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("amx-int8") || !__builtin_cpu_supports("avx512f") ||
        !__builtin_cpu_supports("avx512bw")) {
      return false;
    }
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

void amx_resize(AmxActivations* a, int64_t n, int64_t k) {
  a->n = n;
  a->k = k;
  const auto size = static_cast<size_t>(k / 32 * ((n + 15) / 16) * 256);
  a->hi.resize(size);
  a->lo.resize(size);
}

// f32_to_bf16 on 16 lanes: the bf16 bits in the low half of each 32-bit lane.
__attribute__((target("avx512f"))) inline __m512i round_bf16(__m512i u) {
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(
          u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                              _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)))),
      16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                _mm512_set1_epi32(0x7F800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_blend_epi32(nan, rounded, quiet);
}

__attribute__((target("avx512f,avx512bw"))) void amx_prepare(AmxActivations* a, const float* x,
                                                             int64_t ldx, int64_t t0, int64_t t1) {
  const int64_t k_blocks = a->k / 32;
  const __m512i rows = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64,
                                        48, 32, 16, 0);
  // 16-bit element 2p of the result is bf16 of column 2p (element 4p of the two rounded
  // vectors, seen as 16-bit halves), element 2p + 1 that of column 2p + 1 (element 4p + 2).
  alignas(64) uint16_t pick[32];
  for (int p = 0; p < 16; ++p) {
    pick[2 * p] = static_cast<uint16_t>(4 * p);
    pick[2 * p + 1] = static_cast<uint16_t>(4 * p + 2);
  }
  const __m512i pairs = _mm512_load_si512(pick);
  for (int64_t tb = t0 / 16; tb * 16 < t1; ++tb) {
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      // [token][pair] first, then transposed into the tile's [pair][token] with gathers.
      alignas(64) uint32_t hi[16][16], lo[16][16];
      for (int64_t tt = 0; tt < 16; ++tt) {
        const int64_t t = tb * 16 + tt;
        if (t >= t1) {
          _mm512_store_si512(hi[tt], _mm512_setzero_si512());
          _mm512_store_si512(lo[tt], _mm512_setzero_si512());
          continue;
        }
        const float* v = x + t * ldx + kb * 32;
        const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
        const __m512i h0 = round_bf16(_mm512_castps_si512(v0));
        const __m512i h1 = round_bf16(_mm512_castps_si512(v1));
        // What rounding left over, rounded in turn.
        const __m512 r0 = _mm512_sub_ps(v0, _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16)));
        const __m512 r1 = _mm512_sub_ps(v1, _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16)));
        const __m512i l0 = round_bf16(_mm512_castps_si512(r0));
        const __m512i l1 = round_bf16(_mm512_castps_si512(r1));
        _mm512_store_si512(hi[tt], _mm512_permutex2var_epi16(h0, pairs, h1));
        _mm512_store_si512(lo[tt], _mm512_permutex2var_epi16(l0, pairs, l1));
      }
      const size_t tile = static_cast<size_t>((tb * k_blocks + kb) * 256);
      for (int p = 0; p < 16; ++p) {
        _mm512_storeu_si512(a->hi.data() + tile + p * 16, _mm512_i32gather_epi32(rows, &hi[0][p], 4));
        _mm512_storeu_si512(a->lo.data() + tile + p * 16, _mm512_i32gather_epi32(rows, &lo[0][p], 4));
      }
    }
  }
}

// Tiles: 0-3 accumulators (2 row blocks × 2 token blocks), 4-5 weights, 6-7 activations.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_matmul_rows(const AmxActivations& a,
                                                                  const ops::Matrix& w, int64_t r0,
                                                                  int64_t r1, float* y,
                                                                  int64_t ldy) {
  configure_tiles(TileLayout::kBf16);
  const int64_t token_blocks = (a.n + 15) / 16, k_blocks = a.k / 32;
  const int64_t stride = w.cols * 2;
  const auto* base = static_cast<const uint8_t*>(w.data);
  alignas(64) float c[4][16][16];
  auto store = [&](int64_t r, int64_t tb, const float (*tile)[16]) {
    store_transposed(tile, std::min<int64_t>(16, a.n - tb * 16), y + tb * 16 * ldy + r, ldy);
  };
  // Rows in groups whose weights (about 512 KB) stay in L2 while every token block passes over
  // them; within a group, each token pair's activations stay in L2 for all its row panels. The
  // group's rows are first copied into contiguous 1 KB tiles: tile loads straight from the
  // matrix would step by the row length, and with power-of-two rows their 16 lines fall into
  // the same few L1 sets and evict each other (measured: about 15% slower).
  const int64_t group_rows = std::max<int64_t>(32, (int64_t{512} << 10) / stride / 32 * 32);
  thread_local std::vector<uint8_t> packed_buf;
  const auto packed_size = static_cast<size_t>(group_rows * stride);
  if (packed_buf.size() < packed_size) packed_buf.resize(packed_size);
  uint8_t* packed = packed_buf.data();
  // Tile (panel p, half h, kb): 16 rows × 64 bytes at packed + ((p·k_blocks + kb)·2 + h)·1024.
  auto tile_at = [&](int64_t p, int64_t h, int64_t kb) {
    return packed + ((p * k_blocks + kb) * 2 + h) * 1024;
  };
  for (int64_t g = r0; g < r1; g += group_rows) {
    const int64_t g1 = std::min(r1, g + group_rows);
    for (int64_t r = g; r < g1; r += 16) {
      const int64_t p = (r - g) / 32, h = (r - g) / 16 % 2;
      for (int64_t kb = 0; kb < k_blocks; ++kb) {
        uint8_t* dst = tile_at(p, h, kb);
        for (int64_t m = 0; m < 16; ++m) std::memcpy(dst + m * 64, base + (r + m) * stride + kb * 64, 64);
      }
    }
    for (int64_t tb = 0; tb < token_blocks; tb += 2) {
      const bool two_tokens = tb + 1 < token_blocks;
      for (int64_t r = g; r < g1; r += 32) {
        const bool two_rows = r + 32 <= g1;
        const int64_t p = (r - g) / 32;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
          const size_t t0 = static_cast<size_t>((tb * k_blocks + kb) * 256);
          _tile_loadd(4, tile_at(p, 0, kb), 64);
          if (two_rows) _tile_loadd(5, tile_at(p, 1, kb), 64);
          for (const UninitVector<uint32_t>* part : {&a.hi, &a.lo}) {
            _tile_loadd(6, part->data() + t0, 64);
            if (two_tokens) _tile_loadd(7, part->data() + t0 + k_blocks * 256, 64);
            // Both products of tile 6 first: its next load waits for them, not for tile 7's.
            _tile_dpbf16ps(0, 4, 6);
            if (two_rows) _tile_dpbf16ps(2, 5, 6);
            if (two_tokens) _tile_dpbf16ps(1, 4, 7);
            if (two_tokens && two_rows) _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        store(r, tb, c[0]);
        if (two_tokens) store(r, tb + 1, c[1]);
        if (two_rows) {
          store(r + 16, tb, c[2]);
          if (two_tokens) store(r + 16, tb + 1, c[3]);
        }
      }
    }
  }
}

void amx_int8_resize(AmxInt8Activations* a, int64_t n, int64_t k) {
  a->n = n;
  a->k = k;
  const int64_t token_blocks = (n + 15) / 16, blocks = k / ops::kQuantBlock;
  a->codes.resize(static_cast<size_t>(token_blocks * blocks * 512));
  a->scales.resize(static_cast<size_t>(token_blocks * blocks * 16));
}

void amx_int8_prepare(AmxInt8Activations* a, const float* x, int64_t ldx, int64_t t0, int64_t t1) {
  const int64_t blocks = a->k / ops::kQuantBlock;
  int8_t q[ops::kQuantBlock];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tb = t / 16, tt = t % 16;
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t sum;
      const float scale =
          quantize_activations(x + t * ldx + b * ops::kQuantBlock, q, &sum, Isa::kAvx512);
      int8_t* tile = a->codes.data() + (tb * blocks + b) * 512;
      // Row kk of the tile holds codes 4kk..4kk+3 of each of the 16 tokens.
      for (int kk = 0; kk < 8; ++kk) std::memcpy(tile + kk * 64 + tt * 4, q + 4 * kk, 4);
      a->scales[static_cast<size_t>((tb * blocks + b) * 16 + tt)] = scale;
    }
  }
  // The last block's padding tokens: zero codes and scales.
  if (t1 == a->n) {
    for (int64_t t = t1; t % 16 != 0; ++t) {
      const int64_t tb = t / 16, tt = t % 16;
      for (int64_t b = 0; b < blocks; ++b) {
        int8_t* tile = a->codes.data() + (tb * blocks + b) * 512;
        for (int kk = 0; kk < 8; ++kk) std::memset(tile + kk * 64 + tt * 4, 0, 4);
        a->scales[static_cast<size_t>((tb * blocks + b) * 16 + tt)] = 0.0f;
      }
    }
  }
}

// acc[m] += tile[m] · xs · ws[m] for the 16 rows of one block's integer sums.
__attribute__((target("avx512f"))) inline void scale_block(const int32_t (*tile)[16],
                                                           const float* xs, const float* ws,
                                                           __m512* acc) {
  const __m512 x = _mm512_loadu_ps(xs);
  for (int m = 0; m < 16; ++m) {
    const __m512 s = _mm512_mul_ps(x, _mm512_set1_ps(ws[m]));
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(tile[m])), s, acc[m]);
  }
}

// Tiles: 0-1 accumulators (alternating blocks), 2-3 weight codes, 4-5 activation codes. Each
// block's integer sums leave the tiles at once and are scaled into f32 sums in 16 vector
// registers (one per weight row), so every block keeps its own two scales.
__attribute__((target("amx-tile,amx-int8,avx512f,f16c"))) void amx_int8_matmul_rows(
    const AmxInt8Activations& a, const ops::Matrix& w, int64_t r0, int64_t r1, float* y,
    int64_t ldy) {
  configure_tiles(TileLayout::kInt8);
  const int64_t token_blocks = (a.n + 15) / 16, blocks = a.k / ops::kQuantBlock;
  const bool q4 = w.format == ops::WeightFormat::kQ4;
  const __m128i levels = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ops::kQ4Levels));
  // A panel of 16 rows as signed codes, block by block (16 rows × 32 bytes each), and the
  // panel's weight scales as f32 [block][row].
  thread_local std::vector<int8_t> panel;
  thread_local std::vector<float> panel_scales;
  panel.resize(static_cast<size_t>(blocks * 512));
  panel_scales.resize(static_cast<size_t>(blocks * 16));
  // Held in locals: stores through int8_t* may alias anything, so the compiler would otherwise
  // reload the thread_local vectors' pointers after every store.
  int8_t* const panel_codes = panel.data();
  float* const panel_ws = panel_scales.data();
  alignas(64) int32_t c[2][16][16];
  for (int64_t r = r0; r + 16 <= r1; r += 16) {
    for (int64_t m = 0; m < 16; ++m) {
      const auto* row = static_cast<const uint8_t*>(w.data) + (r + m) * w.row_bytes();
      for (int64_t b = 0; b < blocks; ++b) {
        int8_t* dst = panel_codes + b * 512 + m * 32;
        if (q4) {
          // Low nibbles are columns 0-15, high ones 16-31: one byte shuffle looks each half up.
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
          const __m128i nibble = _mm_set1_epi8(0x0F);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                           _mm_shuffle_epi8(levels, _mm_and_si128(v, nibble)));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16),
                           _mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(v, 4), nibble)));
        } else {
          std::memcpy(dst, row + b * 32, 32);
        }
      }
      // The row's scales, 16 blocks to a conversion, into their [block][row] places.
      const auto* halves =
          static_cast<const uint16_t*>(w.scale) + (w.row_offset + r + m) * w.scale_cols;
      float* scales = panel_ws + m;
      int64_t b = 0;
      for (; b + 16 <= blocks; b += 16) {
        alignas(64) float f[16];
        _mm512_store_ps(
            f, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(halves + b))));
        for (int j = 0; j < 16; ++j) scales[(b + j) * 16] = f[j];
      }
      for (; b < blocks; ++b) scales[b * 16] = _cvtsh_ss(halves[b]);
    }
    for (int64_t tb = 0; tb < token_blocks; ++tb) {
      __m512 acc[16];
      for (auto& v : acc) v = _mm512_setzero_ps();
      const int8_t* act = a.codes.data() + tb * blocks * 512;
      const float* act_scales = a.scales.data() + tb * blocks * 16;
      auto accumulate = [&](const int32_t(*tile)[16], int64_t b) {
        scale_block(tile, act_scales + b * 16, panel_ws + b * 16, acc);
      };
      for (int64_t b = 0; b < blocks; b += 2) {
        const bool two = b + 1 < blocks;
        _tile_zero(0);
        _tile_loadd(2, panel_codes + b * 512, 32);
        _tile_loadd(4, act + b * 512, 64);
        _tile_dpbssd(0, 2, 4);
        if (two) {
          _tile_zero(1);
          _tile_loadd(3, panel_codes + (b + 1) * 512, 32);
          _tile_loadd(5, act + (b + 1) * 512, 64);
          _tile_dpbssd(1, 3, 5);
        }
        _tile_stored(0, c[0], 64);
        accumulate(c[0], b);
        if (two) {
          _tile_stored(1, c[1], 64);
          accumulate(c[1], b + 1);
        }
      }
      // acc[m] holds row r + m for the block's 16 tokens: y is [token][row].
      alignas(64) float out[16][16];
      for (int m = 0; m < 16; ++m) _mm512_store_ps(out[m], acc[m]);
      store_transposed(out, std::min<int64_t>(16, a.n - tb * 16), y + tb * 16 * ldy + r, ldy);
    }
  }
}

// 8 rounds of tile products per iteration on tiles that stay in registers (all 16 × 64 bytes; the
// values do not matter): bf16 pairs, or int8 quadruples, per 32-bit element.
template <bool kInt8>
__attribute__((target("amx-tile,amx-bf16,amx-int8"))) int32_t tile_throughput_loop(int64_t iters) {
  configure_tiles(TileLayout::kBf16);
  alignas(64) static const uint8_t zeros[16 * 64] = {};
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_loadd(7, zeros, 64);
#define WHALE_TILE_PRODUCT(c, a, b) \
  if constexpr (kInt8) {            \
    _tile_dpbssd(c, a, b);          \
  } else {                          \
    _tile_dpbf16ps(c, a, b);        \
  }
  for (int64_t i = 0; i < iters; ++i) {
    WHALE_TILE_PRODUCT(0, 4, 6)
    WHALE_TILE_PRODUCT(1, 4, 7)
    WHALE_TILE_PRODUCT(2, 5, 6)
    WHALE_TILE_PRODUCT(3, 5, 7)
    WHALE_TILE_PRODUCT(0, 5, 7)
    WHALE_TILE_PRODUCT(1, 5, 6)
    WHALE_TILE_PRODUCT(2, 4, 7)
    WHALE_TILE_PRODUCT(3, 4, 6)
  }
#undef WHALE_TILE_PRODUCT
  alignas(64) int32_t c[16][16];
  _tile_stored(0, c, 64);
  return c[0][0];
}

float amx_bf16_throughput_loop(int64_t iters) {
  return std::bit_cast<float>(tile_throughput_loop<false>(iters));
}
int32_t amx_int8_throughput_loop(int64_t iters) { return tile_throughput_loop<true>(iters); }

#else

bool amx_usable() { return false; }
int32_t amx_int8_throughput_loop(int64_t) { return 0; }
void amx_int8_resize(AmxInt8Activations*, int64_t, int64_t) {}
void amx_int8_prepare(AmxInt8Activations*, const float*, int64_t, int64_t, int64_t) {}
void amx_int8_matmul_rows(const AmxInt8Activations&, const ops::Matrix&, int64_t, int64_t, float*,
                          int64_t) {}
float amx_bf16_throughput_loop(int64_t) { return 0; }
void amx_resize(AmxActivations*, int64_t, int64_t) {}
void amx_prepare(AmxActivations*, const float*, int64_t, int64_t, int64_t) {}
void amx_matmul_rows(const AmxActivations&, const ops::Matrix&, int64_t, int64_t, float*,
                     int64_t) {}

#endif

}  // namespace whale::cpu
