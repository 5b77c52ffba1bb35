// Every CPU kernel, on every instruction set this machine has, against ops/ref.
#include <gtest/gtest.h>

#include <random>

#include "backends/cpu/attention_kernels.h"
#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/quant_kernels.h"
#include "ops/quant.h"
#include "ops/ref/ref_backend.h"

namespace whale {
namespace {

using ops::Matrix;

std::vector<float> random_vector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Owns the bytes of a random matrix stored in one dtype.
struct StoredMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  Matrix m;
};

StoredMatrix make_matrix(DType dtype, int64_t rows, int64_t cols, uint32_t seed,
                         int64_t block_rows = 4, int64_t block_cols = 8) {
  StoredMatrix s;
  const std::vector<float> v = random_vector(static_cast<size_t>(rows * cols), seed, 0.5f);
  s.bytes.resize(static_cast<size_t>(rows * cols * dtype_size(dtype)));
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float x = v[static_cast<size_t>(i)];
    switch (dtype) {
      case DType::kF32:
        reinterpret_cast<float*>(s.bytes.data())[i] = x;
        break;
      case DType::kBF16:
        reinterpret_cast<uint16_t*>(s.bytes.data())[i] = f32_to_bf16(x);
        break;
      case DType::kF16:
        reinterpret_cast<uint16_t*>(s.bytes.data())[i] = f32_to_f16(x);
        break;
      case DType::kF8E4M3:
        s.bytes[static_cast<size_t>(i)] = f32_to_fp8_e4m3(x * 100);
        break;
      default:
        break;
    }
  }
  s.m.dtype = dtype;
  s.m.data = s.bytes.data();
  s.m.rows = rows;
  s.m.cols = cols;
  if (dtype == DType::kF8E4M3) {
    // Small blocks with ragged edges exercise the block indexing.
    s.m.block_rows = block_rows;
    s.m.block_cols = block_cols;
    s.m.scale_cols = (cols + block_cols - 1) / block_cols;
    s.scales =
        random_vector(static_cast<size_t>((rows + block_rows - 1) / block_rows * s.m.scale_cols),
                      seed + 1, 0.01f);
    s.m.scale = s.scales.data();
  }
  return s;
}

// A random matrix in one of whale's block formats, quantized from normal values.
StoredMatrix make_block_matrix(ops::WeightFormat format, int64_t rows, int64_t cols,
                               uint32_t seed) {
  StoredMatrix s;
  const std::vector<float> v = random_vector(static_cast<size_t>(rows * cols), seed, 0.5f);
  const int64_t row_bytes = format == ops::WeightFormat::kQ4 ? cols / 2 : cols;
  const int64_t blocks = cols / ops::kQuantBlock;
  s.bytes.resize(static_cast<size_t>(rows * row_bytes));
  s.scales.resize(static_cast<size_t>(rows * blocks));  // f16 codes kept in f32-sized slots
  auto* halves = reinterpret_cast<uint16_t*>(s.scales.data());
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = v.data() + r * cols;
    if (format == ops::WeightFormat::kQ4) {
      ops::quantize_row_q4(row, cols, s.bytes.data() + r * row_bytes, halves + r * blocks);
    } else {
      ops::quantize_row_q8(row, cols, reinterpret_cast<int8_t*>(s.bytes.data() + r * row_bytes),
                           halves + r * blocks);
    }
  }
  s.m.format = format;
  s.m.dtype = format == ops::WeightFormat::kQ4 ? DType::kU8 : DType::kI8;
  s.m.data = s.bytes.data();
  s.m.rows = rows;
  s.m.cols = cols;
  s.m.scale = halves;
  s.m.scale_dtype = DType::kF16;
  s.m.scale_cols = blocks;
  s.m.block_rows = 1;
  s.m.block_cols = ops::kQuantBlock;
  return s;
}

// Σ_k |w(r, k)| · v_k for every token t and row r (at [t · ldy + r]), where v_k is |x_k|, or with
// `block_max` the largest |x| of k's 32-column block: what the kernels' rounding bounds scale.
std::vector<float> abs_products(const Matrix& w, const float* x, int64_t ldx, int64_t n,
                                int64_t ldy, bool block_max) {
  std::vector<float> out(static_cast<size_t>(n * ldy), 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0;
      for (int64_t k = 0; k < w.cols; ++k) {
        double v = std::fabs(x[t * ldx + k]);
        if (block_max) {
          const int64_t b0 = k / ops::kQuantBlock * ops::kQuantBlock;
          v = 0;
          for (int64_t j = b0; j < b0 + ops::kQuantBlock; ++j)
            v = std::max(v, double(std::fabs(x[t * ldx + j])));
        }
        acc += std::fabs(double(w.at(r, k))) * v;
      }
      out[static_cast<size_t>(t * ldy + r)] = static_cast<float>(acc);
    }
  }
  return out;
}

// A product with a block-format matrix against the exact one: the vector kernels round each
// activation to block codes, 16-bit for q8 (within max|x| / 65534 of its block) and 8-bit for q4
// (max|x| / 254), the AMX tiles round both operands to bf16 (each within 2^-9); on top, f32
// accumulation.
void expect_block_product_close(const std::vector<float>& got, const std::vector<float>& want,
                                const Matrix& w, const float* x, int64_t ldx, int64_t n,
                                int64_t ldy, bool tiles) {
  const std::vector<float> bound = abs_products(w, x, ldx, n, ldy, /*block_max=*/!tiles);
  const double factor = tiles                                ? std::ldexp(1.0, -8)
                        : w.format == ops::WeightFormat::kQ4 ? 1.0 / 254
                                                             : 1.0 / 65534;
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], factor * bound[i] + 2e-5f * (1.0f + std::fabs(want[i])))
        << "at " << i;
  }
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_NEAR(a[i], b[i], tol * (1.0f + std::fabs(b[i]))) << "at " << i;
  }
}

class CpuOps : public ::testing::TestWithParam<cpu::Isa> {
 protected:
  ThreadPool pool_{3};
  cpu::CpuBackend cpu_{pool_, GetParam()};
  ops::RefBackend ref_;

  // Runs `a` (outputs packed [n_q, n_heads, dv]) on this backend and on the reference.
  void expect_attention_matches_ref(ops::AttentionArgs a) const {
    std::vector<float> o_cpu(static_cast<size_t>(a.n_q * a.n_heads * a.dv)), o_ref(o_cpu.size());
    a.out_row = a.n_heads * a.dv, a.out_head = a.dv;
    a.out = o_cpu.data();
    cpu_.attention(a);
    a.out = o_ref.data();
    ref_.attention(a);
    expect_close(o_cpu, o_ref, 1e-5f);
  }
};

TEST_P(CpuOps, MatmulEveryDtypeAndSlices) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
    const int64_t rows = 37, cols = 70, n = 5;
    StoredMatrix w = make_matrix(dtype, rows, cols, 7);
    const auto x = random_vector(static_cast<size_t>(n * cols), 3);
    for (const auto& [begin, count] : {std::pair<int64_t, int64_t>{0, rows}, {5, 13}, {36, 1}}) {
      const Matrix view = w.m.row_slice(begin, count);
      std::vector<float> y_cpu(static_cast<size_t>(n * count)), y_ref(y_cpu.size());
      cpu_.matmul(y_cpu.data(), count, x.data(), cols, n, view);
      ref_.matmul(y_ref.data(), count, x.data(), cols, n, view);
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " slice " + std::to_string(begin));
      expect_close(y_cpu, y_ref, 1e-5f);

      std::vector<float> xt = random_vector(static_cast<size_t>(n * count), 4);
      std::vector<float> z_cpu(static_cast<size_t>(n * cols)), z_ref(z_cpu.size());
      cpu_.matmul_t(z_cpu.data(), cols, xt.data(), count, n, view);
      ref_.matmul_t(z_ref.data(), cols, xt.data(), count, n, view);
      expect_close(z_cpu, z_ref, 1e-5f);
    }
  }
}

// Widths that reach every vector body and tail: bf16 runs in 32-column steps, the block formats
// in groups of 128 columns with single 32-column blocks after them.
TEST_P(CpuOps, MatmulWideShapesEveryFormat) {
  for (const int64_t cols : {32, 64, 96, 128, 160, 384, 1056}) {
    for (const int64_t rows : {1, 6, 9}) {
      const int64_t n = 3;
      const auto x = random_vector(static_cast<size_t>(n * cols), uint32_t(cols + rows));
      for (int f = 0; f < 3; ++f) {
        StoredMatrix w = f == 0   ? make_matrix(DType::kBF16, rows, cols, 21)
                         : f == 1 ? make_block_matrix(ops::WeightFormat::kQ8, rows, cols, 22)
                                  : make_block_matrix(ops::WeightFormat::kQ4, rows, cols, 23);
        SCOPED_TRACE("format " + std::to_string(f) + " rows " + std::to_string(rows) + " cols " +
                     std::to_string(cols));
        for (const auto& [begin, count] :
             {std::pair<int64_t, int64_t>{0, rows}, {rows / 2, rows - rows / 2}}) {
          const Matrix view = w.m.row_slice(begin, count);
          std::vector<float> y_cpu(static_cast<size_t>(n * count)), y_ref(y_cpu.size());
          cpu_.matmul(y_cpu.data(), count, x.data(), cols, n, view);
          ref_.matmul(y_ref.data(), count, x.data(), cols, n, view);
          if (f == 0) {
            expect_close(y_cpu, y_ref, 2e-5f);
          } else {
            expect_block_product_close(y_cpu, y_ref, view, x.data(), cols, n, count, false);
          }
          // Transposed (absorbed MLA's W_UK is a row slice of kv_b): exact in every format.
          std::vector<float> xt = random_vector(static_cast<size_t>(n * count), 4);
          std::vector<float> z_cpu(static_cast<size_t>(n * cols)), z_ref(z_cpu.size());
          cpu_.matmul_t(z_cpu.data(), cols, xt.data(), count, n, view);
          ref_.matmul_t(z_ref.data(), cols, xt.data(), count, n, view);
          expect_close(z_cpu, z_ref, 1e-5f);
        }
      }
    }
  }
}

// Enough tokens for the tile path (AMX, where present): whole and partial tiles of rows and of
// tokens, a row slice, and output rows wider than the product.
TEST_P(CpuOps, MatmulManyTokens) {
  for (const int64_t cols : {32, 1056}) {
    for (const int64_t rows : {16, 37, 64}) {
      for (const int64_t n : {4, 16, 40, 200}) {
        // 200 tokens: more groups of 16 than one chunk holds at 1,056 columns (the vector-lane
        // kernels pack a chunk at a time); once is enough.
        if (n == 200 && (rows != 37 || cols != 1056)) continue;
        StoredMatrix w = make_matrix(DType::kBF16, rows, cols, uint32_t(rows + cols));
        const auto x = random_vector(static_cast<size_t>(n * cols), uint32_t(n));
        const Matrix view = w.m.row_slice(rows > 16 ? 3 : 0, rows > 16 ? rows - 3 : rows);
        const int64_t ldy = view.rows + 2;
        std::vector<float> y_cpu(static_cast<size_t>(n * ldy), -1.0f), y_ref(y_cpu);
        cpu_.matmul(y_cpu.data(), ldy, x.data(), cols, n, view);
        ref_.matmul(y_ref.data(), ldy, x.data(), cols, n, view);
        SCOPED_TRACE("rows " + std::to_string(rows) + " cols " + std::to_string(cols) + " n " +
                     std::to_string(n));
        // The tile path carries activations as two bf16 parts (16 significant bits): each sum is
        // within 2^-16 of Σ|x·w|, not of the sum itself.
        StoredMatrix w_abs = w;
        for (size_t i = 0; i < w_abs.bytes.size(); i += 2) w_abs.bytes[i + 1] &= 0x7F;
        w_abs.m.data = w_abs.bytes.data();
        std::vector<float> x_abs(x);
        for (float& v : x_abs) v = std::fabs(v);
        std::vector<float> magnitude(y_ref.size(), 0.0f);
        ref_.matmul(magnitude.data(), ldy, x_abs.data(), cols, n,
                    w_abs.m.row_slice(view.row_offset, view.rows));
        for (size_t i = 0; i < y_ref.size(); ++i) {
          ASSERT_NEAR(y_cpu[i], y_ref[i], std::ldexp(magnitude[i], -16) + 1e-6f) << "at " << i;
        }
        // The block formats: on AMX, bf16 tiles; elsewhere the 16-bit vector kernels.
        for (const auto format : {ops::WeightFormat::kQ8, ops::WeightFormat::kQ4}) {
          StoredMatrix q = make_block_matrix(format, rows, cols, uint32_t(rows * cols));
          const Matrix qv = q.m.row_slice(view.row_offset, view.rows);
          std::vector<float> q_cpu(y_cpu.size(), -1.0f), q_ref(q_cpu);
          cpu_.matmul(q_cpu.data(), ldy, x.data(), cols, n, qv);
          ref_.matmul(q_ref.data(), ldy, x.data(), cols, n, qv);
          SCOPED_TRACE(format == ops::WeightFormat::kQ4 ? "q4" : "q8");
          for (int64_t t = 0; t < n; ++t) {  // the padding columns stay untouched
            for (int64_t c = qv.rows; c < ldy; ++c) ASSERT_EQ(q_cpu[t * ldy + c], -1.0f);
          }
          expect_block_product_close(q_cpu, q_ref, qv, x.data(), cols, n, ldy,
                                     cpu_.isa() == cpu::Isa::kAmx);
        }
      }
    }
  }
}

// A batch of products gives each product exactly what it gives alone, whatever its neighbours.
TEST_P(CpuOps, MatmulBatchEqualsSeparateProducts) {
  StoredMatrix a = make_matrix(DType::kBF16, 40, 96, 31);
  StoredMatrix b = make_block_matrix(ops::WeightFormat::kQ4, 33, 256, 32);
  StoredMatrix c = make_block_matrix(ops::WeightFormat::kQ8, 7, 128, 33);
  StoredMatrix d = make_matrix(DType::kF8E4M3, 20, 24, 34);
  const auto xa = random_vector(2 * 96, 1), xb = random_vector(3 * 256, 2),
             xc = random_vector(1 * 128, 3), xd = random_vector(2 * 20, 4);
  std::vector<float> ya(2 * 40), yb(3 * 33), yc(7), yd(2 * 24);
  const ops::MatmulTask tasks[] = {{ya.data(), 40, xa.data(), 96, 2, a.m},
                                   {yb.data(), 33, xb.data(), 256, 3, b.m},
                                   {yc.data(), 7, xc.data(), 128, 1, c.m},
                                   {yd.data(), 24, xd.data(), 20, 2, d.m, /*transposed=*/true}};
  cpu_.matmul_batch(tasks);
  std::vector<float> za(ya.size()), zb(yb.size()), zc(yc.size()), zd(yd.size());
  cpu_.matmul(za.data(), 40, xa.data(), 96, 2, a.m);
  cpu_.matmul(zb.data(), 33, xb.data(), 256, 3, b.m);
  cpu_.matmul(zc.data(), 7, xc.data(), 128, 1, c.m);
  cpu_.matmul_t(zd.data(), 24, xd.data(), 20, 2, d.m);
  EXPECT_EQ(ya, za);
  EXPECT_EQ(yb, zb);
  EXPECT_EQ(yc, zc);
  EXPECT_EQ(yd, zd);
}

// The same for products of many tokens (tiles on AMX), where neighbours with the same
// activations share one prepared copy of them: the first bf16 pair and the block-format pair do,
// the bf16 product of other activations and the bf16 / block-format neighbours (they prepare
// differently) must not.
TEST_P(CpuOps, MatmulBatchOfManyTokensEqualsSeparateProducts) {
  constexpr int64_t n = 40, cols = 96;
  StoredMatrix a = make_matrix(DType::kBF16, 64, cols, 41);
  StoredMatrix a2 = make_matrix(DType::kBF16, 48, cols, 42);
  StoredMatrix b = make_block_matrix(ops::WeightFormat::kQ4, 32, cols, 43);
  StoredMatrix c = make_block_matrix(ops::WeightFormat::kQ8, 16, cols, 44);
  StoredMatrix d = make_matrix(DType::kBF16, 32, cols, 45);
  const auto x = random_vector(n * cols, 5), x2 = random_vector(n * cols, 6);
  std::vector<std::vector<float>> y(5);
  const StoredMatrix* ws[] = {&a, &a2, &d, &b, &c};
  const float* xs[] = {x.data(), x.data(), x2.data(), x.data(), x.data()};
  std::vector<ops::MatmulTask> tasks;
  for (size_t i = 0; i < 5; ++i) {
    y[i].assign(static_cast<size_t>(n * ws[i]->m.rows), -1.0f);
    tasks.push_back({y[i].data(), ws[i]->m.rows, xs[i], cols, n, ws[i]->m});
  }
  cpu_.matmul_batch(tasks);
  for (size_t i = 0; i < 5; ++i) {
    std::vector<float> alone(y[i].size(), -2.0f);
    cpu_.matmul(alone.data(), ws[i]->m.rows, xs[i], cols, n, ws[i]->m);
    EXPECT_EQ(y[i], alone) << "product " << i;
  }
}

TEST_P(CpuOps, MatmulHonoursStrides) {
  StoredMatrix w = make_matrix(DType::kBF16, 8, 16, 9);
  const auto x = random_vector(3 * 20, 5);                        // rows of 20, 16 used
  std::vector<float> y_cpu(3 * 11, -1.0f), y_ref(3 * 11, -1.0f);  // rows of 11, 8 written
  cpu_.matmul(y_cpu.data(), 11, x.data(), 20, 3, w.m);
  ref_.matmul(y_ref.data(), 11, x.data(), 20, 3, w.m);
  expect_close(y_cpu, y_ref, 1e-5f);
  EXPECT_EQ(y_cpu[8], -1.0f);  // untouched padding
}

TEST_P(CpuOps, RmsNormSwigluEmbedding) {
  const int64_t n = 4, dim = 33;
  const auto x = random_vector(static_cast<size_t>(n * dim), 11);
  StoredMatrix w = make_matrix(DType::kBF16, 1, dim, 12);
  std::vector<float> a(x.size()), b(x.size());
  cpu_.rmsnorm(a.data(), dim, x.data(), dim, n, dim, w.m, 1e-6f);
  ref_.rmsnorm(b.data(), dim, x.data(), dim, n, dim, w.m, 1e-6f);
  expect_close(a, b, 1e-5f);

  const auto up = random_vector(x.size(), 13);
  cpu_.swiglu(a.data(), dim, x.data(), up.data(), dim, n, dim);
  ref_.swiglu(b.data(), dim, x.data(), up.data(), dim, n, dim);
  expect_close(a, b, 1e-5f);
  // Gates far out on both sides (σ saturates; e^-|g| reaches the clamp) and at zero.
  std::vector<float> far(x);
  for (size_t i = 0; i < far.size(); ++i) far[i] = i % 5 == 0 ? 0.0f : far[i] * 60.0f;
  far[1] = 200.0f;
  far[2] = -200.0f;
  cpu_.swiglu(a.data(), dim, far.data(), up.data(), dim, n, dim);
  ref_.swiglu(b.data(), dim, far.data(), up.data(), dim, n, dim);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], b[i], 1e-5f * (1.0f + std::fabs(b[i]))) << "at " << i << " g " << far[i];
  }

  StoredMatrix table = make_matrix(DType::kBF16, 10, dim, 14);
  const int32_t ids[4] = {9, 0, 3, 9};
  cpu_.embedding(a.data(), table.m, ids, n);
  ref_.embedding(b.data(), table.m, ids, n);
  expect_close(a, b, 0.0f);
}

TEST_P(CpuOps, Rope) {
  const int64_t n = 5, heads = 3, dim = 8, ld = 40;
  auto x1 = random_vector(static_cast<size_t>(n * ld), 15);
  auto x2 = x1;
  const int32_t pos[5] = {0, 1, 7, 100, 4000};
  const float inv_freq[4] = {1.0f, 0.1f, 0.01f, 0.001f};
  cpu_.rope(x1.data() + 2, ld, 12, n, heads, dim, pos, inv_freq, 1.3f);
  ref_.rope(x2.data() + 2, ld, 12, n, heads, dim, pos, inv_freq, 1.3f);
  expect_close(x1, x2, 1e-5f);
}

TEST_P(CpuOps, AttentionMultiQueryAndPerHead) {
  for (int64_t kv_heads : {1, 4}) {
    ops::AttentionArgs a;
    a.n_q = 3, a.n_kv = 9, a.n_heads = 4, a.kv_heads = kv_heads, a.dk = 12, a.dv = 10;
    const auto q = random_vector(static_cast<size_t>(a.n_q * a.n_heads * a.dk), 20);
    const auto k = random_vector(static_cast<size_t>(a.n_kv * kv_heads * a.dk), 21);
    const auto v = random_vector(static_cast<size_t>(a.n_kv * kv_heads * a.dv), 22);
    const int32_t pos[3] = {6, 7, 8};
    a.q = q.data(), a.q_row = a.n_heads * a.dk, a.q_head = a.dk;
    a.k = k.data(), a.k_row = kv_heads * a.dk, a.k_head = a.dk;
    a.v = v.data(), a.v_row = kv_heads * a.dv, a.v_head = a.dv;
    a.q_pos = pos;
    a.scale = 0.3f;
    expect_attention_matches_ref(a);
  }
}

// Scores far apart (sharp attention): most weights underflow, the largest carry the result; and
// both ways of grouping work (four heads of a query, four queries of a head).
TEST_P(CpuOps, AttentionWithSpreadScores) {
  for (const int64_t kv_heads : {int64_t{1}, int64_t{4}}) {
    ops::AttentionArgs a;
    a.n_q = 7, a.n_kv = 40, a.n_heads = 4, a.kv_heads = kv_heads, a.dk = 24, a.dv = 20;
    const auto q = random_vector(static_cast<size_t>(a.n_q * a.n_heads * a.dk), 41, 30.0f);
    const auto k = random_vector(static_cast<size_t>(a.n_kv * kv_heads * a.dk), 42);
    const auto v = random_vector(static_cast<size_t>(a.n_kv * kv_heads * a.dv), 43);
    std::vector<int32_t> pos(static_cast<size_t>(a.n_q));
    for (int64_t t = 0; t < a.n_q; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(33 + t);
    a.q = q.data(), a.q_row = a.n_heads * a.dk, a.q_head = a.dk;
    a.k = k.data(), a.k_row = kv_heads * a.dk, a.k_head = a.dk;
    a.v = v.data(), a.v_row = kv_heads * a.dv, a.v_head = a.dv;
    a.q_pos = pos.data();
    a.scale = 0.2f;
    SCOPED_TRACE("kv_heads " + std::to_string(kv_heads));
    expect_attention_matches_ref(a);
  }
}

// Absorbed MLA's shape: one kv head for many query heads (a partial block of 16 among them), a
// lone decode query whose keys the threads split, and several queries at different positions.
// With more than one block of heads, 1,100 keys make each thread's range several chunks of
// keys, merged.
TEST_P(CpuOps, MultiQueryAttentionSplitsKeys) {
  for (const int64_t heads : {int64_t{16}, int64_t{20}, int64_t{3}, int64_t{35}}) {
    for (const int64_t n_q : {int64_t{1}, int64_t{5}}) {
      ops::AttentionArgs a;
      a.n_q = n_q, a.n_kv = heads > 16 ? 1100 : 203, a.n_heads = heads, a.kv_heads = 1;
      a.dk = 37, a.dv = 29;
      const int64_t row = 41;  // keys and values share cache rows: [value | rest]
      const auto q = random_vector(static_cast<size_t>(a.n_q * a.n_heads * a.dk), 51, 3.0f);
      const auto kv = random_vector(static_cast<size_t>(a.n_kv * row), 52);
      std::vector<int32_t> pos(static_cast<size_t>(a.n_q));
      for (int64_t t = 0; t < a.n_q; ++t)
        pos[static_cast<size_t>(t)] = static_cast<int32_t>(a.n_kv - 1 - 40 * t);
      a.q = q.data(), a.q_row = a.n_heads * a.dk, a.q_head = a.dk;
      a.k = kv.data() + 4, a.k_row = row, a.k_head = 0;
      a.v = kv.data(), a.v_row = row, a.v_head = 0;
      a.q_pos = pos.data();
      a.scale = 0.15f;
      SCOPED_TRACE("heads " + std::to_string(heads) + ", queries " + std::to_string(n_q));
      expect_attention_matches_ref(a);
    }
  }
}

// The same over a bf16 cache, rows shared by keys and values (MLA's) or apart, with an odd
// dimension and value columns past the last 16. Where the kernel rounds queries and weights to
// bf16 (AVX512-BF16), the reference gets the rounded queries too (the scale is a power of two,
// so rounding commutes with it), and what is left is the weights' rounding: each within 2^-9,
// so an output within 2^-9 of its weights' mean of |value| (up to about 2 for these normal
// values over the fewest keys). 20 heads over 1,100 keys: chunks of keys merged, as above.
TEST_P(CpuOps, MultiQueryAttentionOverBf16Cache) {
  const bool rounds = cpu::multi_query_bf16_rounds(GetParam());
  struct Shape {
    int64_t dk, dv;
    bool shared;
  };
  for (const Shape shape : {Shape{37, 29, true}, Shape{72, 64, true}, Shape{40, 21, false}}) {
    for (const int64_t heads : {int64_t{16}, int64_t{20}, int64_t{3}}) {
      for (const int64_t n_q : {int64_t{1}, int64_t{5}}) {
        ops::AttentionArgs a;
        a.n_q = n_q, a.n_kv = heads > 16 ? 1100 : 203, a.n_heads = heads, a.kv_heads = 1;
        a.dk = shape.dk, a.dv = shape.dv;
        const int64_t row = shape.dk + 4;
        std::vector<float> q =
            random_vector(static_cast<size_t>(a.n_q * a.n_heads * a.dk), 61, 3.0f);
        const auto kv = random_vector(static_cast<size_t>(a.n_kv * row), 62);
        const auto vs = random_vector(static_cast<size_t>(a.n_kv * row), 63);
        std::vector<uint16_t> kv16(kv.size()), v16(vs.size());
        for (size_t i = 0; i < kv.size(); ++i)
          kv16[i] = f32_to_bf16(kv[i]), v16[i] = f32_to_bf16(vs[i]);
        std::vector<int32_t> pos(static_cast<size_t>(a.n_q));
        for (int64_t t = 0; t < a.n_q; ++t)
          pos[static_cast<size_t>(t)] = static_cast<int32_t>(a.n_kv - 1 - 40 * t);
        a.q_row = a.n_heads * a.dk, a.q_head = a.dk;
        a.k16 = kv16.data() + 4, a.k_row = row;
        a.v16 = shape.shared ? kv16.data() : v16.data(), a.v_row = row;
        a.q_pos = pos.data();
        a.scale = 0.125f;
        std::vector<float> o_cpu(static_cast<size_t>(a.n_q * a.n_heads * a.dv)),
            o_ref(o_cpu.size());
        a.out_row = a.n_heads * a.dv, a.out_head = a.dv;
        a.q = q.data(), a.out = o_cpu.data();
        cpu_.attention(a);
        if (rounds) {
          for (float& x : q) x = bf16_to_f32(f32_to_bf16(x));
        }
        a.q = q.data(), a.out = o_ref.data();
        ref_.attention(a);
        SCOPED_TRACE("dk " + std::to_string(a.dk) + ", heads " + std::to_string(heads) +
                     ", queries " + std::to_string(n_q));
        expect_close(o_cpu, o_ref, rounds ? 4e-3f : 1e-5f);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, CpuOps, ::testing::ValuesIn(cpu::supported_isas()),
                         [](const auto& info) {
                           return std::string(cpu::isa_name(info.param)).substr(4);
                         });

TEST(Matrix, Fp8BlockScalesApplyPerBlock) {
  // 3×5 fp8 matrix with 2×2 blocks: element (r, c) is scaled by S[r/2][c/2].
  uint8_t q[15];
  for (auto& b : q) b = 0x38;             // 1.0
  const float s[6] = {1, 2, 3, 4, 5, 6};  // [2, 3]
  Matrix m;
  m.dtype = DType::kF8E4M3, m.data = q, m.rows = 3, m.cols = 5;
  m.scale = s, m.scale_cols = 3, m.block_rows = 2, m.block_cols = 2;
  EXPECT_EQ(m.at(0, 0), 1.0f);
  EXPECT_EQ(m.at(1, 3), 2.0f);
  EXPECT_EQ(m.at(2, 4), 6.0f);
  EXPECT_EQ(m.row_slice(2, 1).at(0, 2), 5.0f);  // the slice keeps its block row
  float row[5];
  m.row_slice(1, 2).dequantize_row(1, 1, 5, row);  // stored row 2, columns 1..4
  EXPECT_EQ(row[0], 4.0f);
  EXPECT_EQ(row[1], 5.0f);
  EXPECT_EQ(row[3], 6.0f);
}

}  // namespace
}  // namespace whale

namespace whale {
namespace {

// Quantizing a row keeps every value within half a step of its block's scale, and a zero block
// gets scale 0; the codes read back through Matrix are the ones written.
TEST(BlockFormats, QuantizeRowsRoundTrip) {
  for (const auto format : {ops::WeightFormat::kQ8, ops::WeightFormat::kQ4}) {
    const int64_t cols = 96;
    std::vector<float> v = random_vector(static_cast<size_t>(cols), 5, 0.3f);
    std::fill_n(v.begin() + 32, 32, 0.0f);  // block 1 is all zero
    v[70] = 4.0f;                            // an outlier in block 2
    const StoredMatrix m = [&] {
      StoredMatrix out = make_block_matrix(format, 1, cols, 1);  // for its shape
      auto* halves = reinterpret_cast<uint16_t*>(out.scales.data());
      if (format == ops::WeightFormat::kQ4) {
        ops::quantize_row_q4(v.data(), cols, out.bytes.data(), halves);
      } else {
        ops::quantize_row_q8(v.data(), cols, reinterpret_cast<int8_t*>(out.bytes.data()), halves);
      }
      return out;
    }();
    const double levels = format == ops::WeightFormat::kQ4 ? 7.0 : 127.0;
    double err2 = 0, sig2 = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const float scale = ops::block_scale(m.m, 0, c / ops::kQuantBlock);
      const float back = m.m.at(0, c);
      EXPECT_FLOAT_EQ(back, scale * static_cast<float>(ops::weight_code(m.m, 0, c)));
      if (c / ops::kQuantBlock == 1) {
        EXPECT_EQ(scale, 0.0f);
        EXPECT_EQ(back, 0.0f);
      }
      err2 += (back - v[static_cast<size_t>(c)]) * (back - v[static_cast<size_t>(c)]);
      sig2 += double(v[static_cast<size_t>(c)]) * v[static_cast<size_t>(c)];
    }
    // Uniform rounding error of a step amax/levels is about amax/levels/√12 per value.
    EXPECT_LT(std::sqrt(err2 / sig2), (format == ops::WeightFormat::kQ4 ? 0.5 : 0.05))
        << "levels " << levels;
    EXPECT_NEAR(m.m.at(0, 70), 4.0f, 4.0f / levels);  // the outlier itself survives
  }
}

TEST(BlockFormats, ActivationBlocksRoundTo16Bits) {
  for (const cpu::Isa isa : cpu::supported_isas()) {
    SCOPED_TRACE(std::string(cpu::isa_name(isa)));
    std::vector<float> x = random_vector(32, 9);
    x[3] = -5.0f;
    int8_t hi[32];
    uint8_t lo[32];
    int32_t hi_sum = 0;
    const float scale = cpu::quantize_activations16(x.data(), hi, lo, &hi_sum, isa);
    EXPECT_FLOAT_EQ(scale, 5.0f / 32767.0f);
    EXPECT_EQ(hi[3], -128);  // -32767 = -128 · 256 + 1
    EXPECT_EQ(lo[3], 1);
    int32_t sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int code = hi[i] * 256 + lo[i];
      EXPECT_NEAR(code * scale, x[static_cast<size_t>(i)], scale / 2 + 1e-7f) << i;
      sum += hi[i];
    }
    EXPECT_EQ(hi_sum, sum);
    const std::vector<float> zeros(32, 0.0f);
    EXPECT_EQ(cpu::quantize_activations16(zeros.data(), hi, lo, &hi_sum, isa), 0.0f);
    EXPECT_EQ(hi[0], 0);
    EXPECT_EQ(lo[0], 0);
    x[7] = NAN;
    EXPECT_TRUE(std::isnan(cpu::quantize_activations16(x.data(), hi, lo, &hi_sum, isa)));
    EXPECT_EQ(hi[3], 0);
  }
}

// q4's activations are prepared as 8-bit codes: q = round(x / s), s = max|x| / 127, Σ q for the
// correction, the same bytes on every path.
TEST(BlockFormats, Q4ActivationsRoundTo8Bits) {
  const int64_t k = 160;  // one full group of 128 columns (kernel order) and a block after it
  std::vector<float> x = random_vector(static_cast<size_t>(k), 12);
  x[130] = -6.0f;  // the second block's extreme; x[131] a tie at half a step
  x[131] = 0.5f * 6.0f / 127.0f;
  const cpu::PreparedLayout l = cpu::prepared_layout(k);
  for (const cpu::Isa isa : cpu::supported_isas()) {
    SCOPED_TRACE(std::string(cpu::isa_name(isa)));
    std::vector<uint8_t> p(static_cast<size_t>(l.bytes));
    cpu::prepare_quantized(x.data(), k, ops::WeightFormat::kQ4, p.data(), isa);
    const auto* hi = reinterpret_cast<const int8_t*>(p.data() + l.hi);
    const auto* codes = reinterpret_cast<const int16_t*>(p.data() + l.codes);
    const auto* scales = reinterpret_cast<const float*>(p.data() + l.scales);
    EXPECT_FLOAT_EQ(scales[4], 6.0f / 127.0f);
    EXPECT_EQ(hi[130], -127);
    EXPECT_EQ(hi[131], 0);  // ties to even
    for (int64_t i = 128; i < k; ++i) {
      EXPECT_EQ(codes[i], hi[i]);
      EXPECT_EQ(p[static_cast<size_t>(l.lo + i)], 0);
      if (i != 131) {
        EXPECT_NEAR(hi[i] * scales[4], x[static_cast<size_t>(i)], scales[4] / 2 + 1e-7f) << i;
      }
    }
    // Block 0's low nibbles' activations are its first 16 columns, in the kernel's order.
    for (int64_t i = 0; i < 16; ++i) {
      EXPECT_NEAR(hi[i] * scales[0], x[static_cast<size_t>(i)], scales[0] / 2 + 1e-7f) << i;
    }
    const auto* zero = reinterpret_cast<const int32_t*>(p.data() + l.zero);
    int32_t sum = 0;
    for (int64_t i = 0; i < 16; ++i) sum += hi[i] + hi[i + 64];  // block 0: both halves
    EXPECT_EQ(zero[0] + zero[1] + zero[2] + zero[3], -128 * sum);
  }
}

}  // namespace
}  // namespace whale

namespace whale {
namespace {

// Every kernel path rounds activations to the same block codes, byte for byte.
TEST(BlockFormats, PreparedActivationsAreTheSameOnEveryPath) {
  std::vector<float> x = random_vector(32 * 12, 77, 3.0f);
  std::fill_n(x.begin() + 32, 32, 0.0f);  // a zero block
  x[70] = 1e-30f;                          // a tiny value beside normal ones
  x[100] = -250.0f;                        // an outlier
  x[200] = 0.5f * 3.0f / 32767.0f;         // ties
  for (const auto format : {ops::WeightFormat::kQ8, ops::WeightFormat::kQ4}) {
    const int64_t k = static_cast<int64_t>(x.size());
    std::vector<uint8_t> want(static_cast<size_t>(cpu::prepared_layout(k).bytes));
    cpu::prepare_quantized(x.data(), k, format, want.data(), cpu::Isa::kPortable);
    for (const cpu::Isa isa : cpu::supported_isas()) {
      std::vector<uint8_t> got(want.size());
      cpu::prepare_quantized(x.data(), k, format, got.data(), isa);
      EXPECT_EQ(got, want) << cpu::isa_name(isa);
    }
  }
}

// AVX-512's q4 kernel with and without VBMI (the level lookup differs) against the reference
// product, over full groups of 128 columns and a tail block, 1 to 4 rows at a time.
TEST(BlockFormats, Q4KernelWithAndWithoutVbmiMatchesReference) {
  if (!cpu::has_avx512_vnni()) GTEST_SKIP() << "no AVX-512 VNNI";
  const int64_t rows = 7, cols = 288;
  const StoredMatrix w = make_block_matrix(ops::WeightFormat::kQ4, rows, cols, 91);
  const std::vector<float> x = random_vector(cols, 92);
  std::vector<float> want(rows);
  ops::RefBackend().matmul(want.data(), rows, x.data(), cols, 1, w.m);
  std::vector<uint8_t> prepared(static_cast<size_t>(cpu::prepared_layout(cols).bytes));
  cpu::prepare_quantized(x.data(), cols, ops::WeightFormat::kQ4, prepared.data(),
                         cpu::Isa::kAvx512);
  for (const bool vbmi : {false, true}) {
    if (vbmi && !cpu::has_avx512_vbmi()) continue;
    const cpu::QuantRowsFn kernel =
        cpu::quant_rows_kernel(cpu::Isa::kAvx512, ops::WeightFormat::kQ4, vbmi);
    for (int step = 1; step <= 4; ++step) {
      std::vector<float> got(rows);
      for (int64_t r = 0; r < rows; r += step) {
        kernel(prepared.data(), 0, 1, w.m, r, static_cast<int>(std::min<int64_t>(step, rows - r)),
               got.data() + r, 0);
      }
      SCOPED_TRACE("vbmi " + std::to_string(vbmi) + " step " + std::to_string(step));
      expect_block_product_close(got, want, w.m, x.data(), cols, 1, rows, false);
    }
  }
}

TEST(Isa, EnvironmentForcesAKernelPath) {
  const std::vector<cpu::Isa> isas = cpu::supported_isas();
  ASSERT_EQ(isas.front(), cpu::Isa::kPortable);
  setenv("WHALE_ISA", "portable", 1);
  EXPECT_EQ(cpu::best_isa(), cpu::Isa::kPortable);
  setenv("WHALE_ISA", "no-such-isa", 1);
  EXPECT_EQ(cpu::best_isa(), isas.back());  // with a warning
  unsetenv("WHALE_ISA");
  EXPECT_EQ(cpu::best_isa(), isas.back());
}

}  // namespace
}  // namespace whale
