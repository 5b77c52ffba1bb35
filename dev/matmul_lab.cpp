// Kernel lab: times the CPU backend's products and attention on the shapes synth-v3-1b's
// prefill and decode run, each as a fraction of the limit that binds it. Not a test: speed goals
// live here and in `whale bench`.
//   whale_matmul_lab [threads] [SHAPE | decode | attention]   (a name filters the prefill shapes)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "core/dtype.h"
#include "core/thread_pool.h"
#include "ops/quant.h"

using namespace whale;

namespace {

double seconds(const auto& fn, int reps) {
  fn();  // warm
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

struct Bf16Matrix {
  std::vector<uint16_t> data;
  ops::Matrix m;
  Bf16Matrix(int64_t rows, int64_t cols, std::mt19937& rng) : data(size_t(rows * cols)) {
    std::normal_distribution<float> g(0, 0.02f);
    for (auto& v : data) v = f32_to_bf16(g(rng));
    m.dtype = DType::kBF16;
    m.data = data.data();
    m.rows = rows;
    m.cols = cols;
  }
};

// A [rows, cols] matrix in one of whale's block formats, from random weights.
struct QuantMatrix {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  ops::Matrix m;
  QuantMatrix(int64_t rows, int64_t cols, ops::WeightFormat format, std::mt19937& rng) {
    const bool q4 = format == ops::WeightFormat::kQ4;
    const int64_t row_bytes = q4 ? cols / 2 : cols;
    codes.resize(size_t(rows * row_bytes));
    scales.resize(size_t(rows * cols / ops::kQuantBlock));
    std::normal_distribution<float> g(0, 0.02f);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (auto& v : row) v = g(rng);
      uint16_t* sc = scales.data() + r * cols / ops::kQuantBlock;
      if (q4) {
        ops::quantize_row_q4(row.data(), cols, codes.data() + r * row_bytes, sc);
      } else {
        ops::quantize_row_q8(row.data(), cols,
                             reinterpret_cast<int8_t*>(codes.data() + r * row_bytes), sc);
      }
    }
    m.format = format;
    m.dtype = q4 ? DType::kU8 : DType::kI8;
    m.data = codes.data();
    m.rows = rows;
    m.cols = cols;
    m.scale = scales.data();
    m.scale_dtype = DType::kF16;
    m.scale_cols = cols / ops::kQuantBlock;
    m.block_rows = 1;
    m.block_cols = ops::kQuantBlock;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  ThreadPool pool(threads);
  cpu::CpuBackend ops(pool);
  std::printf("%s, %d threads\n", std::string(ops.name()).c_str(), pool.size());
  std::mt19937 rng(1);
  struct Shape {
    const char* name;
    int64_t rows, cols, n, copies;  // copies: distinct matrices per call (experts), cold cache
  };
  const Shape shapes[] = {
      {"dense gate 2816x1024 n=512", 2816, 1024, 512, 1},
      {"dense down 1024x2816 n=512", 1024, 2816, 512, 1},
      {"o 1024x1024 n=512", 1024, 1024, 512, 1},
      {"expert gate 512x1024 n=48 x32", 512, 1024, 48, 32},
      {"expert gate 512x1024 n=20 x32", 512, 1024, 20, 32},
      {"expert gate 512x1024 n=8 x32", 512, 1024, 8, 32},
      {"expert down 1024x512 n=48 x32", 1024, 512, 48, 32},
      {"v3 expert gate 2048x7168 n=64 x4", 2048, 7168, 64, 4},
  };
  const bool attention_only = argc > 2 && std::string(argv[2]) == "attention";
  const bool decode_only = argc > 2 && std::string(argv[2]) == "decode";
  for (const Shape& s : shapes) {
    if (attention_only || decode_only) break;
    if (argc > 2 && std::string(s.name).find(argv[2]) == std::string::npos) continue;
    std::vector<Bf16Matrix> ws;
    for (int64_t c = 0; c < s.copies; ++c) ws.emplace_back(s.rows, s.cols, rng);
    std::vector<float> x(size_t(s.n * s.cols)), y(size_t(s.copies * s.n * s.rows));
    std::normal_distribution<float> g(0, 1);
    for (auto& v : x) v = g(rng);
    std::vector<ops::MatmulTask> tasks;
    for (int64_t c = 0; c < s.copies; ++c)
      tasks.push_back(
          {y.data() + c * s.n * s.rows, s.rows, x.data(), s.cols, s.n, ws[size_t(c)].m});
    const double t = seconds([&] { ops.matmul_batch(tasks); }, argc > 2 ? 200 : 5);
    const double flops = 2.0 * double(s.rows * s.cols * s.n * s.copies);
    const double bytes = 2.0 * double(s.rows * s.cols * s.copies);
    std::printf("%-34s %8.3f ms  %7.1f GFLOP/s  %6.1f GB/s of weights\n", s.name, t * 1e3,
                flops / t * 1e-9, bytes / t * 1e-9);
  }
  // Decode's products: one token through many expert-sized matrices, more than the caches hold,
  // as GB/s of weights streamed.
  for (const char* form : {"bf16", "q8", "q4"}) {
    if (argc > 2 && !decode_only) break;
    // synth-v3-1b's expert shape, or WHALE_LAB_DECODE_ROWS / _COLS (V3's: 2048 x 7168).
    auto env_or = [](const char* name, int64_t fallback) {
      const char* v = std::getenv(name);
      return v ? std::max<int64_t>(32, std::atoll(v) / 32 * 32) : fallback;
    };
    const int64_t rows = env_or("WHALE_LAB_DECODE_ROWS", 512);
    const int64_t cols = env_or("WHALE_LAB_DECODE_COLS", 1024);
    const int64_t per_matrix = std::string(form) == "bf16" ? rows * cols * 2
                               : std::string(form) == "q8" ? rows * cols * 17 / 16
                                                           : rows * cols * 9 / 16;
    // 400 MB, well past the last-level cache; WHALE_LAB_DECODE_MB=1 keeps them in L2 instead,
    // which times the kernels' arithmetic rather than the memory.
    const char* mb = std::getenv("WHALE_LAB_DECODE_MB");
    const int64_t count = std::max<int64_t>(2, ((mb ? std::atoll(mb) : 400) << 20) / per_matrix);
    const int reps = static_cast<int>(
        std::min<int64_t>(20000, 20 * (int64_t{400} << 20) / (count * per_matrix)));
    std::vector<Bf16Matrix> dense;
    std::vector<QuantMatrix> quant;
    std::vector<ops::MatmulTask> tasks;
    // WHALE_LAB_DECODE_TRANSPOSED=1: y = x · w instead (absorbed MLA's W_UK).
    const bool transposed = std::getenv("WHALE_LAB_DECODE_TRANSPOSED") != nullptr;
    const int64_t width = std::max(rows, cols);
    std::vector<float> x(size_t(width), 0.5f), y(size_t(count * width));
    for (int64_t c = 0; c < count; ++c) {
      if (std::string(form) == "bf16") {
        dense.emplace_back(rows, cols, rng);
      } else {
        quant.emplace_back(
            rows, cols, std::string(form) == "q8" ? ops::WeightFormat::kQ8 : ops::WeightFormat::kQ4,
            rng);
      }
    }
    double bytes = 0;
    for (int64_t c = 0; c < count; ++c) {
      const ops::Matrix& m = dense.empty() ? quant[size_t(c)].m : dense[size_t(c)].m;
      tasks.push_back(transposed
                          ? ops::MatmulTask{y.data() + c * cols, cols, x.data(), rows, 1, m,
                                            /*transposed=*/true}
                          : ops::MatmulTask{y.data() + c * rows, rows, x.data(), cols, 1, m});
      bytes += double(m.nbytes()) + (m.scale ? double(m.rows * m.scale_cols * 2) : 0.0);
    }
    // The same bytes read with the bandwidth probe's loop, the threads splitting them alike.
    const double t_read = seconds(
        [&] {
          pool.parallel_for(count, [&](int64_t c0, int64_t c1) {
            uint64_t sink = 0;
            for (int64_t c = c0; c < c1; ++c) {
              const ops::Matrix& m = tasks[size_t(c)].w;
              sink += cpu::read_bytes_loop(ops.isa(), m.data, m.nbytes() / 256 * 256);
            }
            if (sink == 42) std::puts("");
          });
        },
        reps);
    std::printf("  read loop over the same weights: %6.1f GB/s\n", bytes / t_read * 1e-9);
    const double t = seconds([&] { ops.matmul_batch(tasks); }, reps);
    std::printf("decode %-4s%s %lld x %lldx%lld n=1     %8.3f ms  %6.1f GB/s\n", form,
                transposed ? "ᵀ" : " ", static_cast<long long>(count), static_cast<long long>(rows),
                static_cast<long long>(cols), t * 1e3, bytes / t * 1e-9);
  }
  // Decode's absorbed attention: 16 heads over one shared [latent 256 | rope 32] cache row
  // (synth-v3-1b), or with WHALE_LAB_ATTENTION_V3 set, V3's 128 heads over [512 | 64].
  const bool v3 = std::getenv("WHALE_LAB_ATTENTION_V3") != nullptr;
  const int64_t heads = v3 ? 128 : 16, dk = v3 ? 576 : 288, dv = v3 ? 512 : 256;
  for (const int64_t n_kv :
       v3 ? std::vector<int64_t>{4096, 16384} : std::vector<int64_t>{64, 540, 2048}) {
    ops::AttentionArgs a;
    a.n_q = 1, a.n_kv = n_kv, a.n_heads = heads, a.kv_heads = 1, a.dk = dk, a.dv = dv;
    std::vector<float> q(size_t(heads * dk)), cache(size_t(n_kv * dk)), out(size_t(heads * dv));
    std::normal_distribution<float> g(0, 1);
    for (auto& v : q) v = g(rng);
    for (auto& v : cache) v = g(rng);
    const int32_t pos = static_cast<int32_t>(n_kv - 1);
    a.q = q.data(), a.q_row = heads * dk, a.q_head = dk;
    a.k = cache.data(), a.k_row = dk;
    a.v = cache.data(), a.v_row = dk;
    a.out = out.data(), a.out_row = heads * dv, a.out_head = dv;
    a.q_pos = &pos;
    a.scale = 0.06f;
    const int hot_reps = (attention_only ? 5000 : 50) / (v3 ? 100 : 1);
    const double t = seconds([&] { ops.attention(a); }, hot_reps);
    const double flops = 2.0 * double(heads) * double(n_kv) * double(dk + dv);
    std::printf("decode attention n_kv=%-5lld            %8.3f ms  %7.1f GFLOP/s\n",
                static_cast<long long>(n_kv), t * 1e3, flops / t * 1e-9);
    // As in a forward pass: each call over another layer's cache, with a layer's weights
    // (12 MB, synth-v3-1b's in q4) streamed between calls, that streaming's time taken off.
    std::vector<std::vector<float>> layers(12, cache);
    std::vector<uint8_t> weights(size_t{12} << 20, 1);
    auto stream = [&] {
      pool.parallel_for(2, [&](int64_t c0, int64_t c1) {
        const size_t half = weights.size() / 2;
        for (int64_t c = c0; c < c1; ++c)
          if (cpu::read_bytes_loop(ops.isa(), weights.data() + size_t(c) * half, half) == 42)
            std::puts("");
      });
    };
    size_t layer = 0;
    const int cold_reps = (attention_only ? 500 : 20) / (v3 ? 20 : 1);
    const double t_stream = seconds(stream, cold_reps);
    const double t_cold = seconds(
        [&] {
          stream();
          a.k = a.v = layers[layer++ % layers.size()].data();
          ops.attention(a);
        },
        cold_reps);
    a.k = a.v = cache.data();
    std::printf("  as in the model (cache from L3):   %8.3f ms  %7.1f GFLOP/s\n",
                (t_cold - t_stream) * 1e3, flops / (t_cold - t_stream) * 1e-9);
    // The same over a bf16 cache.
    std::vector<uint16_t> cache16(cache.size());
    for (size_t i = 0; i < cache.size(); ++i) cache16[i] = f32_to_bf16(cache[i]);
    a.k = a.v = nullptr;
    a.k16 = a.v16 = cache16.data();
    const double t16 = seconds([&] { ops.attention(a); }, hot_reps);
    std::printf("  bf16 cache:                        %8.3f ms  %7.1f GFLOP/s\n", t16 * 1e3,
                flops / t16 * 1e-9);
    std::vector<std::vector<uint16_t>> layers16(12, cache16);
    const double t16_cold = seconds(
        [&] {
          stream();
          a.k16 = a.v16 = layers16[layer++ % layers16.size()].data();
          ops.attention(a);
        },
        cold_reps);
    std::printf("  bf16, as in the model:             %8.3f ms  %7.1f GFLOP/s\n",
                (t16_cold - t_stream) * 1e3, flops / (t16_cold - t_stream) * 1e-9);
    a.k = a.v = cache.data();
    a.k16 = a.v16 = nullptr;
  }
  // Prefill's naive-form attention: 512 causal queries, 16 heads with their own keys (qk 96,
  // v 64), as synth-v3-1b's layers run it.
  {
    constexpr int64_t n = 512, H = 16, dk = 96, dv = 64;
    ops::AttentionArgs a;
    a.n_q = n, a.n_kv = n, a.n_heads = H, a.kv_heads = H, a.dk = dk, a.dv = dv;
    std::vector<float> q(size_t(n * H * dk)), k(q.size()), v(size_t(n * H * dv)), out(v.size());
    std::normal_distribution<float> g(0, 1);
    for (auto* buf : {&q, &k, &v})
      for (auto& x : *buf) x = g(rng);
    std::vector<int32_t> pos(n);
    for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = static_cast<int32_t>(t);
    a.q = q.data(), a.q_row = H * dk, a.q_head = dk;
    a.k = k.data(), a.k_row = H * dk, a.k_head = dk;
    a.v = v.data(), a.v_row = H * dv, a.v_head = dv;
    a.out = out.data(), a.out_row = H * dv, a.out_head = dv;
    a.q_pos = pos.data();
    a.scale = 0.1f;
    const double t = seconds([&] { ops.attention(a); }, attention_only ? 50 : 5);
    const double flops = 2.0 * H * (double(n) * (n + 1) / 2) * (dk + dv);  // causal
    std::printf("prefill attention 512 x 16 heads       %8.3f ms  %7.1f GFLOP/s\n", t * 1e3,
                flops / t * 1e-9);
  }
}
