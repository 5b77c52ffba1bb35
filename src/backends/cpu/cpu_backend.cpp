#include "backends/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backends/cpu/amx_kernels.h"
#include "backends/cpu/quant_kernels.h"
#include "backends/cpu/quant_lanes_kernels.h"
#include "backends/cpu/vector_kernels.h"

namespace whale::cpu {

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmx:
      return "cpu-amx";
    case Isa::kAvx512:
      return "cpu-avx512";
    case Isa::kAvx2:
      return "cpu-avx2";
    case Isa::kPortable:
      break;
  }
  return "cpu-portable";
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out = {Isa::kPortable};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(Isa::kAvx2);
  // AVX-512 F and BW (every AVX-512 server CPU since Skylake has both; the kernels use BW's byte
  // operations).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    out.push_back(Isa::kAvx512);
    if (amx_usable()) out.push_back(Isa::kAmx);
  }
#endif
  return out;
}

Isa best_isa() {
  const std::vector<Isa> isas = supported_isas();
  if (const char* want = std::getenv("WHALE_ISA"); want && *want) {
    for (Isa isa : isas) {
      if (isa_name(isa).substr(4) == want) return isa;
    }
    static bool warned = false;
    if (!warned) {
      std::fprintf(stderr, "whale: WHALE_ISA=%s is not available here; using %s\n", want,
                   std::string(isa_name(isas.back())).c_str());
      warned = true;
    }
  }
  return isas.back();
}

CpuBackend::CpuBackend(ThreadPool& pool, Isa isa)
    : pool_(pool),
      isa_(isa),
      dot_(dot_kernel(isa)),
      bf16_(bf16_rows_kernel(isa)),
      axpy_(axpy_kernel(isa)),
      axpy_bf16_(axpy_bf16_kernel(isa)),
      axpy_q8_(axpy_q8_kernel(isa)),
      attention_(attention_block_kernel(isa)),
      multi_query_(multi_query_kernel(isa)),
      multi_query_bf16_(multi_query_bf16_kernel(isa)),
      swiglu_(swiglu_kernel(isa)) {}

namespace {

// Grows v to at least n elements, at least doubling it: a buffer sized by the context (decode
// attention's) then reallocates a few times per sequence instead of at every token.
template <class Vector>
void grow(Vector& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(std::max(static_cast<size_t>(n), 2 * v.size()));
}

// A buffer per thread that only grows: once warm, it allocates nothing.
float* thread_scratch(int64_t n) {
  thread_local std::vector<float> buf;
  grow(buf, n);
  return buf.data();
}

// Output columns of a transposed product handed out together: 16, or a block of a block format.
int64_t column_block(const ops::Matrix& w) {
  return w.format == ops::WeightFormat::kDense ? 16 : ops::kQuantBlock;
}
// Prepared activations of a chunk of tokens that the vector kernels keep in L2 while they
// walk the rows over them.
constexpr int64_t kTokenChunkBytes = 256 * 1024;
// Tokens that the q8/q4 prefill kernels take in one vector's lanes (see quant_lanes_kernels.h).
constexpr int64_t kLaneTokens = 16;
// Pieces of a batch per thread for parallel_for_balanced: a thread that finishes early takes
// the others' last pieces. Measured in decode against one piece per thread (the batches' time,
// each batch taking one of the two at random within a run, ten runs over bf16, q8 and q4):
// 0-5.7% less, 2% on average. Four and sixteen pieces measured as eight.
constexpr int64_t kPieces = 8;

int64_t task_units(const ops::MatmulTask& t) {
  return t.transposed ? (t.w.cols + column_block(t.w) - 1) / column_block(t.w) : t.w.rows;
}

// The balance weight of a unit: the elements of w it reads, and on tiles as much again per
// block of 16 tokens (a row's products for one token block take about as long as its read
// from memory and copy into tile order); in the vector kernels, that per block of four tokens
// beyond the first. Without the products' share, the threads' halves of a prefill's experts
// differed by their token counts.
int64_t unit_cost(const ops::MatmulTask& t, bool tiles) {
  if (t.transposed) return std::max<int64_t>(1, t.w.rows * column_block(t.w));
  const int64_t blocks = tiles ? 1 + (t.n + 15) / 16 : std::max<int64_t>(1, (t.n + 3) / 4);
  return std::max<int64_t>(1, t.w.cols * blocks);
}

// The activations a thread last prepared for a kernel (widened from bf16, or rounded to block
// codes), with what they were made from. A batch's tasks come to a thread in pieces, and an
// expert's up product follows its gate on the same inputs: within one batch, those reuse the
// copy instead of preparing it again.
template <class T>
struct PreparedInputs {
  uint64_t batch = 0;  // 0: none yet (batches are numbered from 1)
  const float* x = nullptr;
  int64_t ldx = 0, n = 0, cols = 0;
  int kind = 0;
  std::vector<T> data;

  // Whether data already holds task t's activations in this kind; otherwise makes room for
  // `count` elements and takes them as t's (the caller prepares them).
  bool reuse(uint64_t b, const ops::MatmulTask& t, int k, int64_t count) {
    if (b == batch && t.x == x && t.ldx == ldx && t.n == n && t.w.cols == cols && k == kind)
      return true;
    grow(data, count);
    batch = b, x = t.x, ldx = t.ldx, n = t.n, cols = t.w.cols, kind = k;
    return false;
  }
};

// Numbers every batch, so a thread's prepared inputs are never taken for another batch's.
std::atomic<uint64_t> batch_counter{0};

}  // namespace

void CpuBackend::matmul(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                        const ops::Matrix& w) const {
  const ops::MatmulTask task{y, ldy, x, ldx, n, w, false};
  matmul_batch(std::span(&task, 1));
}

void CpuBackend::matmul_t(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                          const ops::Matrix& w) const {
  const ops::MatmulTask task{y, ldy, x, ldx, n, w, true};
  matmul_batch(std::span(&task, 1));
}

void CpuBackend::matmul_rows(const ops::MatmulTask& t, int64_t r0, int64_t r1, uint64_t batch,
                             const AmxActivations* amx) const {
  const ops::Matrix& w = t.w;
  if (amx) {
    // Whole 16-row tiles on AMX; the few rows left over below.
    const int64_t tiled = (r1 - r0) / 16 * 16;
    if (tiled > 0) amx_matmul_rows(*amx, w, r0, r0 + tiled, t.y, t.ldy);
    r0 += tiled;
    if (r0 == r1) return;
  }
  if (w.dtype == DType::kBF16) {
    // Multiplied straight from the stored bf16 rows (widened in registers), four rows by up to
    // four tokens at a time. Tokens go in chunks whose prepared activations stay in L2 while
    // every row of the range passes over them, four rows staying in L1 (L2 at V3's widths) for
    // the whole chunk. A sum does not depend on the rows or tokens beside it, so a row's result
    // never depends on its batch.
    thread_local PreparedInputs<float> inputs;
    if (!inputs.reuse(batch, t, 0, t.n * w.cols)) {
      for (int64_t i = 0; i < t.n; ++i)
        bf16_.prepare(t.x + i * t.ldx, w.cols, inputs.data.data() + i * w.cols);
    }
    const std::vector<float>& prepared = inputs.data;
    const int64_t chunk = std::max<int64_t>(4, kTokenChunkBytes / (4 * w.cols) / 4 * 4);
    for (int64_t i0 = 0; i0 < t.n; i0 += chunk) {
      const int tokens = static_cast<int>(std::min(chunk, t.n - i0));
      for (int64_t r = r0; r < r1; r += 4) {
        const int rows = static_cast<int>(std::min<int64_t>(4, r1 - r));
        bf16_.dot_rows(prepared.data() + i0 * w.cols, w.cols, tokens,
                       static_cast<const uint16_t*>(w.data) + r * w.cols, w.cols, rows, w.cols,
                       t.y + i0 * t.ldy + r, t.ldy);
      }
    }
    return;
  }
  if (w.format != ops::WeightFormat::kDense) {
    // Each token's activations are rounded to block codes once (16-bit for q8, 8-bit for q4),
    // then multiplied with four rows of codes by up to two tokens at a time, tokens in chunks
    // that stay in L2.
    const QuantRowsFn rows_kernel = quant_rows_kernel(isa_, w.format);
    const int64_t stride = prepared_layout(w.cols).bytes;
    thread_local PreparedInputs<uint8_t> inputs;
    if (!inputs.reuse(batch, t, static_cast<int>(w.format), t.n * stride)) {
      for (int64_t i = 0; i < t.n; ++i)
        prepare_quantized(t.x + i * t.ldx, w.cols, w.format, inputs.data.data() + i * stride, isa_);
    }
    const std::vector<uint8_t>& prepared = inputs.data;
    int64_t first = 0;  // tokens before it went 16 to a vector
    if (t.n >= kLaneTokens && has_lanes_kernels(isa_)) {
      // Whole groups of 16 tokens in vector lanes, in chunks that stay in L2: the block scale
      // work once per 16 tokens. synth-v3-1b's prefill (Zen 4, 2 threads, the two ways taken in
      // turn): q8 370-384 → 538-563 tokens/s, q4 591-617 → 613-653.
      // Each chunk is packed just before its rows pass over it.
      const int64_t tiles = t.n / kLaneTokens, tile_bytes = lanes_bytes(w.cols, w.format);
      const int64_t tile_chunk = std::max<int64_t>(1, kTokenChunkBytes / tile_bytes);
      thread_local std::vector<uint8_t> lanes;
      grow(lanes, std::min(tiles, tile_chunk) * tile_bytes);
      for (int64_t j0 = 0; j0 < tiles; j0 += tile_chunk) {
        const int64_t j1 = std::min(tiles, j0 + tile_chunk);
        for (int64_t j = j0; j < j1; ++j) {
          pack_lanes(prepared.data() + j * kLaneTokens * stride, stride, w.cols, w.format,
                     lanes.data() + (j - j0) * tile_bytes);
        }
        for (int64_t r = r0; r < r1; r += 4) {
          for (int64_t j = j0; j < j1; ++j) {
            lanes_rows(lanes.data() + (j - j0) * tile_bytes, w.cols, kLaneTokens, w, r,
                       static_cast<int>(std::min<int64_t>(4, r1 - r)),
                       t.y + j * kLaneTokens * t.ldy + r, t.ldy);
          }
        }
      }
      first = tiles * kLaneTokens;
    }
    const int64_t chunk = std::max<int64_t>(2, kTokenChunkBytes / stride / 4 * 4);
    for (int64_t i0 = first; i0 < t.n; i0 += chunk) {
      const int tokens = static_cast<int>(std::min(chunk, t.n - i0));
      for (int64_t r = r0; r < r1; r += 4) {
        rows_kernel(prepared.data() + i0 * stride, stride, tokens, w, r,
                    static_cast<int>(std::min<int64_t>(4, r1 - r)), t.y + i0 * t.ldy + r, t.ldy);
      }
    }
    return;
  }
  float* buf = w.dtype == DType::kF32 && !w.quantized() ? nullptr : thread_scratch(w.cols);
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = static_cast<const float*>(w.data) + r * w.cols;
    if (buf) {
      w.dequantize_row(r, 0, w.cols, buf);
      row = buf;
    }
    for (int64_t i = 0; i < t.n; ++i) t.y[i * t.ldy + r] = dot_(t.x + i * t.ldx, row, w.cols);
  }
}

void CpuBackend::matmul_cols(const ops::MatmulTask& t, int64_t c0, int64_t c1) const {
  // Walks every weight row for its columns: y[:, c0:c1) = Σ_r x[:, r] · w[r, c0:c1).
  const ops::Matrix& w = t.w;
  for (int64_t i = 0; i < t.n; ++i) std::fill(t.y + i * t.ldy + c0, t.y + i * t.ldy + c1, 0.0f);
  if (w.format == ops::WeightFormat::kDense && w.dtype == DType::kBF16 && !w.quantized()) {
    for (int64_t r = 0; r < w.rows; ++r) {
      const auto* row = static_cast<const uint16_t*>(w.data) + r * w.cols + c0;
      for (int64_t i = 0; i < t.n; ++i)
        axpy_bf16_(t.y + i * t.ldy + c0, row, t.x[i * t.ldx + r], c1 - c0);
    }
    return;
  }
  if (w.format == ops::WeightFormat::kQ8) {  // c0 and c1 on block boundaries (column_block)
    for (int64_t r = 0; r < w.rows; ++r) {
      const int8_t* row = static_cast<const int8_t*>(w.data) + r * w.cols + c0;
      const uint8_t* scales = static_cast<const uint8_t*>(w.scale) +
                              ((w.row_offset + r) * w.scale_cols + c0 / ops::kQuantBlock) * 2;
      for (int64_t i = 0; i < t.n; ++i) {
        axpy_q8_(t.y + i * t.ldy + c0, row, scales, t.x[i * t.ldx + r],
                 (c1 - c0) / ops::kQuantBlock);
      }
    }
    return;
  }
  float* row = thread_scratch(c1 - c0);
  for (int64_t r = 0; r < w.rows; ++r) {
    w.dequantize_row(r, c0, c1, row);
    for (int64_t i = 0; i < t.n; ++i) axpy_(t.y + i * t.ldy + c0, row, t.x[i * t.ldx + r], c1 - c0);
  }
}

bool CpuBackend::use_amx(const ops::MatmulTask& t) const {
  const bool tile_format = t.w.format != ops::WeightFormat::kDense || t.w.dtype == DType::kBF16;
  return isa_ == Isa::kAmx && !t.transposed && tile_format && t.n >= kAmxMinTokens &&
         t.w.cols % 32 == 0 && t.w.rows >= 16;
}

void CpuBackend::matmul_batch(std::span<const ops::MatmulTask> tasks) const {
  // Products of many tokens go to AMX tiles (bf16 weights, or the block formats): their
  // activations are put in tile order first, all threads sharing the work by blocks of 16
  // tokens. The buffers are the caller's: the lambdas run on other threads, whose
  // thread_locals are their own, so they see these through references.
  thread_local std::vector<AmxActivations> caller_amx;
  thread_local std::vector<int64_t> caller_slot, caller_blocks;
  std::vector<AmxActivations>& amx = caller_amx;
  std::vector<int64_t>& slot = caller_slot;      // per task: its prepared activations in amx
  std::vector<int64_t>& blocks = caller_blocks;  // token blocks to prepare before each task's
  grow(amx, std::ssize(tasks));
  grow(slot, std::ssize(tasks));
  grow(blocks, std::ssize(tasks) + 1);
  // A task whose activations are those of the tile task before it (an expert's up after its
  // gate, kv_a after q_a) shares its prepared copy.
  int64_t last = -1;
  blocks[0] = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const ops::MatmulTask& t = tasks[i];
    blocks[i + 1] = blocks[i];
    slot[i] = -1;
    if (!use_amx(t)) continue;
    const bool with_lo = t.w.format == ops::WeightFormat::kDense;
    if (last >= 0) {
      const ops::MatmulTask& p = tasks[static_cast<size_t>(last)];
      const AmxActivations& pa = amx[static_cast<size_t>(slot[static_cast<size_t>(last)])];
      if (p.x == t.x && p.ldx == t.ldx && p.n == t.n && pa.k == t.w.cols && pa.with_lo == with_lo) {
        slot[i] = slot[static_cast<size_t>(last)];
        last = static_cast<int64_t>(i);
        continue;
      }
    }
    slot[i] = static_cast<int64_t>(i);
    last = static_cast<int64_t>(i);
    amx_resize(&amx[i], t.n, t.w.cols, with_lo);
    blocks[i + 1] += (t.n + 15) / 16;
  }
  // Every token block of every task to prepare, as one job.
  if (const int64_t all_blocks = blocks[tasks.size()]; all_blocks > 0) {
    pool_.parallel_for(all_blocks, [&](int64_t b0, int64_t b1) {
      size_t i = static_cast<size_t>(
          std::upper_bound(blocks.begin(), blocks.begin() + std::ssize(tasks) + 1, b0) -
          blocks.begin() - 1);
      for (int64_t b = b0; b < b1;) {
        while (blocks[i + 1] <= b) ++i;
        const ops::MatmulTask& t = tasks[i];
        const int64_t end = std::min(b1, blocks[i + 1]);
        const int64_t first = b - blocks[i];
        amx_prepare(&amx[i], t.x, t.ldx, first * 16, std::min(t.n, (end - blocks[i]) * 16));
        b = end;
      }
    });
  }
  // Every unit of work (a weight row, or a block of output columns of a transposed product) is
  // weighted by the elements it reads, and each thread takes an equal share of the total: one
  // job per batch however many matrices it holds, and each weight byte read once per call.
  int64_t total = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].n > 0) total += task_units(tasks[i]) * unit_cost(tasks[i], slot[i] >= 0);
  }
  if (total == 0) return;
  constexpr int64_t kMinCostPerThread = 1 << 14;  // below this, waking a thread costs more
  const int64_t chunks = std::clamp<int64_t>(total / kMinCostPerThread, 1, pool_.size() * kPieces);
  const uint64_t batch = batch_counter.fetch_add(1, std::memory_order_relaxed) + 1;
  pool_.parallel_for_balanced(chunks, [&](int64_t k0, int64_t k1) {
    const int64_t lo = total * k0 / chunks, hi = total * k1 / chunks;
    int64_t offset = 0;
    for (size_t i = 0; i < tasks.size(); ++i) {
      const ops::MatmulTask& t = tasks[i];
      if (t.n <= 0) continue;
      const int64_t units = task_units(t), cost = unit_cost(t, slot[i] >= 0);
      // The units that start inside [lo, hi).
      const int64_t u0 = std::clamp<int64_t>((lo - offset + cost - 1) / cost, 0, units);
      const int64_t u1 = std::clamp<int64_t>((hi - offset + cost - 1) / cost, 0, units);
      offset += units * cost;
      if (u0 >= u1) continue;
      if (t.transposed) {
        matmul_cols(t, u0 * column_block(t.w), std::min(t.w.cols, u1 * column_block(t.w)));
      } else {
        matmul_rows(t, u0, u1, batch, slot[i] >= 0 ? &amx[static_cast<size_t>(slot[i])] : nullptr);
      }
    }
  });
}

void CpuBackend::rmsnorm(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n, int64_t dim,
                         const ops::Matrix& weight, float eps) const {
  thread_local std::vector<float> caller_weight;  // reached by the workers through `w`
  std::vector<float>& w = caller_weight;
  grow(w, dim);
  weight.dequantize_row(0, 0, dim, w.data());
  pool_.parallel_for(n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* xt = x + t * ldx;
      const float inv = 1.0f / std::sqrt(dot_(xt, xt, dim) / static_cast<float>(dim) + eps);
      for (int64_t i = 0; i < dim; ++i) y[t * ldy + i] = xt[i] * inv * w[static_cast<size_t>(i)];
    }
  });
}

void CpuBackend::embedding(float* y, const ops::Matrix& table, const int32_t* ids,
                           int64_t n) const {
  pool_.parallel_for(n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      table.dequantize_row(ids[t], 0, table.cols, y + t * table.cols);
  });
}

void CpuBackend::rope(float* x, int64_t ld, int64_t head_stride, int64_t n, int64_t n_heads,
                      int64_t rope_dim, const int32_t* pos, const float* inv_freq,
                      float amplitude) const {
  pool_.parallel_for(n, [&](int64_t t0, int64_t t1) {
    float* cs = thread_scratch(rope_dim);  // cos, sin interleaved per pair
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t i = 0; i < rope_dim / 2; ++i) {
        // Angles in double: positions reach 10^5 and f32 would lose the phase.
        const double angle = double(pos[t]) * double(inv_freq[i]);
        cs[2 * i] = static_cast<float>(std::cos(angle) * amplitude);
        cs[2 * i + 1] = static_cast<float>(std::sin(angle) * amplitude);
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* p = x + t * ld + h * head_stride;
        for (int64_t i = 0; i < rope_dim; i += 2) {
          const float c = cs[i], s = cs[i + 1];
          const float a = p[i], b = p[i + 1];
          p[i] = a * c - b * s;
          p[i + 1] = b * c + a * s;
        }
      }
    }
  });
}

void CpuBackend::swiglu(float* y, int64_t ldy, const float* gate, const float* up, int64_t ld_in,
                        int64_t n, int64_t dim) const {
  pool_.parallel_for(n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) swiglu_(y + t * ldy, gate + t * ld_in, up + t * ld_in, dim);
  });
}

void CpuBackend::multi_query_attention(const ops::AttentionArgs& a) const {
  // Parts of (query, block of 16 heads, key range), each written by one item: a lone query
  // (decode) splits its keys across the threads, and the parts are combined after. With one
  // block of heads, an item is one part. With more (V3's 128 heads are 8 blocks), an item is a
  // query's key range for every block, taken a chunk of keys (about kChunkBytes of cache
  // rows) at a time for all the blocks in turn, each block's chunks merged into its part: a
  // chunk of the cache is read from memory once and stays in L2 for the other blocks, with
  // every block's queries. (A part per block over the whole range read the cache once per
  // block: at 16,384 cached tokens of V3's shape, 16.1-20.3 ms per layer as in a forward pass
  // against 13.9-14.5 chunked; lab, Zen 4, 2 threads, bf16 cache; bench/README.md.)
  constexpr int64_t kH = MultiQueryPart::kHeads;
  constexpr int64_t kChunkBytes = 384 << 10;
  const int64_t head_blocks = (a.n_heads + kH - 1) / kH, pairs = a.n_q * head_blocks;
  const bool chunked = head_blocks > 1;
  const int64_t chunk_keys = std::max<int64_t>(
      64, kChunkBytes / ((a.k16 ? 2 : 4) * std::max<int64_t>(1, std::max(a.k_row, a.v_row))));
  const int64_t units = chunked ? a.n_q : pairs;  // what an item covers, before key ranges
  constexpr int64_t kMaxSplits = 64;
  const int64_t splits = std::clamp<int64_t>((pool_.size() + units - 1) / units, 1,
                                             std::min(kMaxSplits, (a.n_kv + 63) / 64));
  const int64_t items = units * splits;
  const bool bf16 = a.k16 != nullptr;
  const int64_t part_floats = 2 * kH + a.dv * kH;  // m, l, o_t
  thread_local std::vector<float> caller_parts;
  std::vector<float>& parts = caller_parts;
  grow(parts, pairs * splits * part_floats);  // [pair][split]
  auto visible = [&](int64_t t) { return std::min<int64_t>(a.n_kv, int64_t{a.q_pos[t]} + 1); };
  pool_.parallel_for(items, [&](int64_t i0, int64_t i1) {
    const int64_t range = (a.n_kv + splits - 1) / splits + 1;
    const int64_t longest = chunked ? std::min(range, chunk_keys) : range;
    const int64_t wide = bf16 ? multi_query_bf16_scratch(a.dk, a.dv, longest) : 0;
    const int64_t blocks_held = chunked ? head_blocks : 1;  // queries transposed at a time
    float* q_all =
        thread_scratch(blocks_held * a.dk * kH + longest * kH + wide + (chunked ? part_floats : 0));
    float* scores = q_all + blocks_held * a.dk * kH;
    float* chunk_part = scores + longest * kH + wide;
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t unit = item / splits, split = item % splits;
      const int64_t t = chunked ? unit : unit / head_blocks;
      const int64_t r0 = visible(t) * split / splits, r1 = visible(t) * (split + 1) / splits;
      const int64_t hb0 = chunked ? 0 : unit % head_blocks, hb1 = chunked ? head_blocks : hb0 + 1;
      // Missing heads of the last block score zero and are never read back.
      for (int64_t hb = hb0; hb < hb1 && r0 < r1; ++hb) {
        float* q_t = q_all + (hb - hb0) * a.dk * kH;
        const int64_t h0 = hb * kH, heads = std::min(kH, a.n_heads - h0);
        for (int64_t h = 0; h < kH; ++h) {
          const float* q = a.q + t * a.q_row + (h0 + h) * a.q_head;
          for (int64_t d = 0; d < a.dk; ++d) q_t[d * kH + h] = h < heads ? q[d] * a.scale : 0.0f;
        }
      }
      for (int64_t c0 = r0; c0 < r1 || c0 == r0; c0 += chunked ? chunk_keys : r1 - r0) {
        const int64_t c1 = chunked ? std::min(r1, c0 + chunk_keys) : r1;
        for (int64_t hb = hb0; hb < hb1; ++hb) {
          float* out = parts.data() + ((t * head_blocks + hb) * splits + split) * part_floats;
          MultiQueryPart p;
          p.m = out, p.l = out + kH, p.o_t = out + 2 * kH;
          p.dk = a.dk, p.dv = a.dv;
          if (r0 == r1) {
            std::fill_n(p.l, kH, 0.0f);
            continue;
          }
          MultiQueryPart c = p;
          if (c0 > r0) c.m = chunk_part, c.l = chunk_part + kH, c.o_t = chunk_part + 2 * kH;
          c.s0 = c0, c.s1 = c1;
          c.q_t = q_all + (hb - hb0) * a.dk * kH;
          c.k = a.k, c.k_row = a.k_row, c.k16 = a.k16;
          c.v = a.v, c.v_row = a.v_row, c.v16 = a.v16;
          c.scores = scores;
          c.wide = scores + longest * kH;
          (bf16 ? multi_query_bf16_ : multi_query_)(c);
          if (c0 > r0) merge_multi_query_part(p, c.m, c.l, c.o_t);
        }
        if (r0 == r1) break;
      }
    }
  });
  // The parts combined, per (pair, range of value columns), so that a lone query's combination
  // is shared by the threads too. Loops over the block's heads innermost: the parts hold each
  // value column's heads side by side (written head by head, one column at a time, this took
  // 1.8% of q4 decode's time at 512 tokens, on one thread).
  const int64_t column_chunks = std::min<int64_t>(pool_.size(), (a.dv + 63) / 64);
  pool_.parallel_for(pairs * column_chunks, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t pair = item / column_chunks, chunk = item % column_chunks;
      const int64_t t = pair / head_blocks, h0 = pair % head_blocks * kH;
      const int64_t heads = std::min(kH, a.n_heads - h0);
      const int64_t c0 = a.dv * chunk / column_chunks, c1 = a.dv * (chunk + 1) / column_chunks;
      const float* first = parts.data() + pair * splits * part_floats;
      float m[kH], l[kH] = {}, weight[kMaxSplits][kH];
      for (int64_t h = 0; h < kH; ++h) m[h] = -INFINITY;
      for (int64_t s = 0; s < splits; ++s) {
        const float* part = first + s * part_floats;
        for (int64_t h = 0; h < kH; ++h) {
          if (part[kH + h] > 0) m[h] = std::max(m[h], part[h]);
        }
      }
      for (int64_t s = 0; s < splits; ++s) {
        const float* part = first + s * part_floats;
        for (int64_t h = 0; h < kH; ++h) {
          weight[s][h] = part[kH + h] > 0 ? std::exp(part[h] - m[h]) : 0.0f;
          l[h] += weight[s][h] * part[kH + h];
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        float sum[kH] = {};
        for (int64_t s = 0; s < splits; ++s) {
          const float* o_t = first + s * part_floats + 2 * kH + c * kH;
          for (int64_t h = 0; h < kH; ++h) sum[h] += weight[s][h] * o_t[h];
        }
        float* o = a.out + t * a.out_row + h0 * a.out_head + c;
        for (int64_t h = 0; h < heads; ++h) o[h * a.out_head] = sum[h] / l[h];
      }
    }
  });
}

void CpuBackend::attention(const ops::AttentionArgs& a) const {
  if (a.kv_heads == 1) return multi_query_attention(a);
  // Keys transposed once per kv head, then items of (query, head) pairs; the caller's buffer
  // is reached through a reference (the workers' thread_locals are their own).
  const int64_t group = a.n_heads / a.kv_heads;
  const int64_t key_blocks = (a.n_kv + 15) / 16;
  // The values are copied too, each head's rows made contiguous: read in place, a head's rows
  // lie a whole row of every head apart (8 KB in synth-v3-1b's naive form), a new page per key
  // and the same few L1 sets for all (the product ran about 40% longer, lab).
  thread_local std::vector<float> caller_keys, caller_values;
  std::vector<float>& keys = caller_keys;
  std::vector<float>& values = caller_values;
  const auto per_head = static_cast<size_t>(key_blocks * 16 * a.dk);
  const auto values_per_head = static_cast<size_t>(a.n_kv * a.dv);
  grow(keys, static_cast<int64_t>(per_head) * a.kv_heads);
  grow(values, static_cast<int64_t>(values_per_head) * a.kv_heads);
  const int64_t chunks_per_head = (a.n_kv + 63) / 64;
  pool_.parallel_for(a.kv_heads * chunks_per_head, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t kh = i / chunks_per_head, s0 = i % chunks_per_head * 64;
      const int64_t count = std::min<int64_t>(64, a.n_kv - s0);
      transpose_keys(a.k + kh * a.k_head + s0 * a.k_row, a.k_row, count, a.dk,
                     keys.data() + per_head * static_cast<size_t>(kh) + s0 * a.dk, isa_);
      float* v = values.data() + values_per_head * static_cast<size_t>(kh) + s0 * a.dv;
      for (int64_t s = 0; s < count; ++s)
        std::copy_n(a.v + kh * a.v_head + (s0 + s) * a.v_row, a.dv, v + s * a.dv);
    }
  });
  // kQ (query, head) pairs that share a kv head per item: heads of one query where many heads
  // share a kv head, else queries of one head.
  constexpr int64_t kQ = AttentionBlock::kMaxQueries;
  const bool by_heads = group >= kQ;
  const int64_t per_item_blocks = by_heads ? (group + kQ - 1) / kQ : (a.n_q + kQ - 1) / kQ;
  const int64_t items = by_heads ? a.n_q * a.kv_heads * per_item_blocks : a.n_heads * per_item_blocks;
  pool_.parallel_for(items, [&](int64_t i0, int64_t i1) {
    float* scores = thread_scratch(kQ * key_blocks * 16 + a.dv);
    for (int64_t item = i0; item < i1; ++item) {
      AttentionBlock b;
      int64_t kh;
      auto add = [&](int64_t t, int64_t h) {
        const int i = b.n_q++;
        b.q[i] = a.q + t * a.q_row + h * a.q_head;
        b.out[i] = a.out + t * a.out_row + h * a.out_head;
        b.visible[i] = std::min<int64_t>(a.n_kv, int64_t{a.q_pos[t]} + 1);
      };
      if (by_heads) {
        const int64_t t = item / (a.kv_heads * per_item_blocks);
        const int64_t rest = item % (a.kv_heads * per_item_blocks);
        kh = rest / per_item_blocks;
        const int64_t h0 = kh * group + rest % per_item_blocks * kQ;
        for (int64_t h = h0; h < std::min(h0 + kQ, (kh + 1) * group); ++h) add(t, h);
      } else {
        const int64_t h = item / per_item_blocks, t0 = item % per_item_blocks * kQ;
        kh = h / group;
        for (int64_t t = t0; t < std::min(t0 + kQ, a.n_q); ++t) add(t, h);
      }
      b.keys_t = keys.data() + per_head * static_cast<size_t>(kh);
      b.v = values.data() + values_per_head * static_cast<size_t>(kh);
      b.v_row = a.dv;
      b.dk = a.dk;
      b.dv = a.dv;
      b.scale = a.scale;
      b.scores = scores;
      attention_(b);
    }
  });
}

}  // namespace whale::cpu
