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

// Every tile 16 rows × 64 bytes, set once per thread.
__attribute__((target("amx-tile"))) void configure_tiles() {
  thread_local bool configured = false;
  if (configured) return;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  // ldtilecfg reads all 64 bytes, but its asm operand names only the first 8: keep the
  // compiler from dropping the stores to the rest.
  __asm__ volatile("" ::"m"(cfg) : "memory");
  _tile_loadconfig(&cfg);
  configured = true;
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
        !__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512f") ||
        !__builtin_cpu_supports("avx512bw")) {
      return false;
    }
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

void amx_resize(AmxActivations* a, int64_t n, int64_t k, bool with_lo) {
  a->n = n;
  a->k = k;
  a->with_lo = with_lo;
  const auto size = static_cast<size_t>(k / 32 * ((n + 15) / 16) * 256);
  a->hi.resize(size);
  if (a->with_lo) a->lo.resize(size);
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
          if (a->with_lo) _mm512_store_si512(lo[tt], _mm512_setzero_si512());
          continue;
        }
        const float* v = x + t * ldx + kb * 32;
        const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
        const __m512i h0 = round_bf16(_mm512_castps_si512(v0));
        const __m512i h1 = round_bf16(_mm512_castps_si512(v1));
        _mm512_store_si512(hi[tt], _mm512_permutex2var_epi16(h0, pairs, h1));
        if (!a->with_lo) continue;
        // What rounding left over, rounded in turn.
        const __m512 r0 = _mm512_sub_ps(v0, _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16)));
        const __m512 r1 = _mm512_sub_ps(v1, _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16)));
        const __m512i l0 = round_bf16(_mm512_castps_si512(r0));
        const __m512i l1 = round_bf16(_mm512_castps_si512(r1));
        _mm512_store_si512(lo[tt], _mm512_permutex2var_epi16(l0, pairs, l1));
      }
      const size_t tile = static_cast<size_t>((tb * k_blocks + kb) * 256);
      for (int p = 0; p < 16; ++p) {
        _mm512_storeu_si512(a->hi.data() + tile + p * 16, _mm512_i32gather_epi32(rows, &hi[0][p], 4));
        if (a->with_lo)
          _mm512_storeu_si512(a->lo.data() + tile + p * 16,
                              _mm512_i32gather_epi32(rows, &lo[0][p], 4));
      }
    }
  }
}

// Row r of a block-format matrix as bf16 (code × scale, rounded to nearest even), block kb's 32
// values at dst + kb · 2048: the place of that row in the group's tile (p, h, kb).
__attribute__((target("avx512f,avx512bw,avx512bf16,f16c"))) void pack_dequantized_row(
    const ops::Matrix& w, int64_t r, uint8_t* dst, int64_t blocks) {
  const auto* row = static_cast<const uint8_t*>(w.data) + r * w.row_bytes();
  const auto* halves = static_cast<const uint16_t*>(w.scale) + (w.row_offset + r) * w.scale_cols;
  const bool q4 = w.format == ops::WeightFormat::kQ4;
  const __m128i levels = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ops::kQ4Levels));
  const __m128i nibble = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < blocks; ++b) {
    __m128i c0, c1;
    if (q4) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
      c0 = _mm_shuffle_epi8(levels, _mm_and_si128(v, nibble));
      c1 = _mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(v, 4), nibble));
    } else {
      c0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 32));
      c1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 32 + 16));
    }
    const __m512 s = _mm512_set1_ps(_cvtsh_ss(halves[b]));
    const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c0)), s);
    const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c1)), s);
    _mm512_storeu_si512(dst + b * 2048, (__m512i)_mm512_cvtne2ps_pbh(f1, f0));
  }
}

// Tiles: 0-3 accumulators (2 row blocks × 2 token blocks), 4-5 weights, 6-7 activations.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_matmul_rows(const AmxActivations& a,
                                                                  const ops::Matrix& w, int64_t r0,
                                                                  int64_t r1, float* y,
                                                                  int64_t ldy) {
  configure_tiles();
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
  thread_local UninitVector<uint8_t> packed_buf;  // 64-byte aligned, as tile loads want
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
      if (w.format != ops::WeightFormat::kDense) {
        for (int64_t m = 0; m < 16; ++m)
          pack_dequantized_row(w, r + m, tile_at(p, h, 0) + m * 64, k_blocks);
        continue;
      }
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
          for (int part_index = 0; part_index < (a.with_lo ? 2 : 1); ++part_index) {
            const UninitVector<uint32_t>* part = part_index == 0 ? &a.hi : &a.lo;
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

// 8 rounds of tile products per iteration on tiles that stay in registers (all 16 × 64 bytes of
// bf16 pairs; the values do not matter).
__attribute__((target("amx-tile,amx-bf16"))) float amx_bf16_throughput_loop(int64_t iters) {
  configure_tiles();
  alignas(64) static const uint8_t zeros[16 * 64] = {};
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_loadd(7, zeros, 64);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    _tile_dpbf16ps(0, 5, 7);
    _tile_dpbf16ps(1, 5, 6);
    _tile_dpbf16ps(2, 4, 7);
    _tile_dpbf16ps(3, 4, 6);
  }
  alignas(64) float c[16][16];
  _tile_stored(0, c, 64);
  return c[0][0];
}

#else

bool amx_usable() { return false; }
float amx_bf16_throughput_loop(int64_t) { return 0; }
void amx_resize(AmxActivations*, int64_t, int64_t, bool) {}
void amx_prepare(AmxActivations*, const float*, int64_t, int64_t, int64_t) {}
void amx_matmul_rows(const AmxActivations&, const ops::Matrix&, int64_t, int64_t, float*,
                     int64_t) {}

#endif

}  // namespace whale::cpu
