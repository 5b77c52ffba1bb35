#include "backends/cpu/amx_kernels.h"

#include <cstring>

#if defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
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

// Palette 1, every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) void configure_tiles() {
  thread_local bool configured = false;
  if (configured) return;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  configured = true;
}

inline uint32_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (u >> 16) | 0x40;  // NaN stays NaN
  u += 0x7FFFu + ((u >> 16) & 1u);                                // nearest, ties to even
  return u >> 16;
}

inline float bf16_value(uint32_t b) {
  const uint32_t u = b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

bool amx_usable() {
  static const bool usable = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

void amx_resize(AmxActivations* a, int64_t n, int64_t k) {
  a->n = n;
  a->k = k;
  const auto size = static_cast<size_t>(k / 32 * ((n + 15) / 16) * 256);
  a->hi.assign(size, 0);
  a->lo.assign(size, 0);
}

void amx_prepare(AmxActivations* a, const float* x, int64_t ldx, int64_t t0, int64_t t1) {
  const int64_t token_blocks = (a->n + 15) / 16;
  for (int64_t t = t0; t < t1; ++t) {
    const float* row = x + t * ldx;
    const int64_t tb = t / 16, tt = t % 16;
    for (int64_t kb = 0; kb < a->k / 32; ++kb) {
      const size_t tile = static_cast<size_t>((kb * token_blocks + tb) * 256);
      for (int64_t p = 0; p < 16; ++p) {
        const float v0 = row[kb * 32 + 2 * p], v1 = row[kb * 32 + 2 * p + 1];
        const uint32_t h0 = bf16_bits(v0), h1 = bf16_bits(v1);
        const uint32_t l0 = bf16_bits(v0 - bf16_value(h0)), l1 = bf16_bits(v1 - bf16_value(h1));
        const size_t at = tile + static_cast<size_t>(p * 16 + tt);
        a->hi[at] = h0 | h1 << 16;
        a->lo[at] = l0 | l1 << 16;
      }
    }
  }
}

// Tiles: 0-3 accumulators (2 row blocks × 2 token blocks), 4-5 weights, 6-7 activations.
__attribute__((target("amx-tile,amx-bf16"))) void amx_matmul_rows(const AmxActivations& a,
                                                                  const ops::Matrix& w, int64_t r0,
                                                                  int64_t r1, float* y,
                                                                  int64_t ldy) {
  configure_tiles();
  const int64_t token_blocks = (a.n + 15) / 16, k_blocks = a.k / 32;
  const int64_t stride = w.cols * 2;
  const auto* base = static_cast<const uint8_t*>(w.data);
  alignas(64) float c[4][16][16];
  auto store = [&](int64_t r, int64_t tb, const float (*tile)[16]) {
    for (int64_t m = 0; m < 16; ++m) {
      for (int64_t t = 0; t < 16 && tb * 16 + t < a.n; ++t) y[(tb * 16 + t) * ldy + r + m] = tile[m][t];
    }
  };
  for (int64_t r = r0; r < r1; r += 32) {
    const bool two_rows = r + 32 <= r1;
    const uint8_t* w0 = base + r * stride;
    const uint8_t* w1 = w0 + 16 * stride;
    for (int64_t tb = 0; tb < token_blocks; tb += 2) {
      const bool two_tokens = tb + 1 < token_blocks;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t kb = 0; kb < k_blocks; ++kb) {
        const size_t t0 = static_cast<size_t>((kb * token_blocks + tb) * 256);
        _tile_loadd(4, w0 + kb * 64, stride);
        if (two_rows) _tile_loadd(5, w1 + kb * 64, stride);
        for (const std::vector<uint32_t>* part : {&a.hi, &a.lo}) {
          _tile_loadd(6, part->data() + t0, 64);
          if (two_tokens) _tile_loadd(7, part->data() + t0 + 256, 64);
          _tile_dpbf16ps(0, 4, 6);
          if (two_tokens) _tile_dpbf16ps(1, 4, 7);
          if (two_rows) {
            _tile_dpbf16ps(2, 5, 6);
            if (two_tokens) _tile_dpbf16ps(3, 5, 7);
          }
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

__attribute__((target("amx-tile,amx-bf16"))) float amx_bf16_throughput_loop(int64_t iters) {
  configure_tiles();
  alignas(64) static const uint16_t ones[16 * 32] = {};  // zero tiles: the values do not matter
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
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
void amx_resize(AmxActivations*, int64_t, int64_t) {}
void amx_prepare(AmxActivations*, const float*, int64_t, int64_t, int64_t) {}
void amx_matmul_rows(const AmxActivations&, const ops::Matrix&, int64_t, int64_t, float*,
                     int64_t) {}

#endif

}  // namespace whale::cpu
