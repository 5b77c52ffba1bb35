#include "ops/ref/ref_backend.h"

#include <cmath>
#include <vector>

#include "core/dtype.h"

namespace whale::ops {

void RefBackend::matmul(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                        const Matrix& w) const {
  // Block formats too: w.at dequantizes each code.
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += double(x[t * ldx + c]) * w.at(r, c);
      y[t * ldy + r] = static_cast<float>(acc);
    }
  }
}

void RefBackend::matmul_t(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                          const Matrix& w) const {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < w.cols; ++c) {
      double acc = 0;
      for (int64_t r = 0; r < w.rows; ++r) acc += double(x[t * ldx + r]) * w.at(r, c);
      y[t * ldy + c] = static_cast<float>(acc);
    }
  }
}

void RefBackend::rmsnorm(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n, int64_t dim,
                         const Matrix& weight, float eps) const {
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[t * ldx + i]) * x[t * ldx + i];
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) {
      y[t * ldy + i] = static_cast<float>(x[t * ldx + i] * inv * weight.at(0, i));
    }
  }
}

void RefBackend::embedding(float* y, const Matrix& table, const int32_t* ids, int64_t n) const {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < table.cols; ++c) y[t * table.cols + c] = table.at(ids[t], c);
  }
}

void RefBackend::rope(float* x, int64_t ld, int64_t head_stride, int64_t n, int64_t n_heads,
                      int64_t rope_dim, const int32_t* pos, const float* inv_freq,
                      float amplitude) const {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < rope_dim / 2; ++i) {
      const double angle = double(pos[t]) * double(inv_freq[i]);
      const double c = std::cos(angle) * amplitude, s = std::sin(angle) * amplitude;
      for (int64_t h = 0; h < n_heads; ++h) {
        float* p = x + t * ld + h * head_stride + 2 * i;
        const double a = p[0], b = p[1];
        p[0] = static_cast<float>(a * c - b * s);
        p[1] = static_cast<float>(b * c + a * s);
      }
    }
  }
}

void RefBackend::swiglu(float* y, int64_t ldy, const float* gate, const float* up, int64_t ld_in,
                        int64_t n, int64_t dim) const {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < dim; ++i) {
      const double g = gate[t * ld_in + i];
      y[t * ldy + i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[t * ld_in + i]);
    }
  }
}

void RefBackend::attention(const AttentionArgs& a) const {
  const int64_t group = a.n_heads / a.kv_heads;
  std::vector<double> p(static_cast<size_t>(a.n_kv));
  auto key = [&](int64_t i) { return a.k16 ? double(bf16_to_f32(a.k16[i])) : double(a.k[i]); };
  auto value = [&](int64_t i) { return a.v16 ? double(bf16_to_f32(a.v16[i])) : double(a.v[i]); };
  for (int64_t t = 0; t < a.n_q; ++t) {
    const int64_t visible = std::min<int64_t>(a.n_kv, int64_t{a.q_pos[t]} + 1);
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const float* q = a.q + t * a.q_row + h * a.q_head;
      const int64_t kh = h / group;
      double max_score = -INFINITY;
      for (int64_t s = 0; s < visible; ++s) {
        const int64_t k = s * a.k_row + kh * a.k_head;
        double dot = 0;
        for (int64_t i = 0; i < a.dk; ++i) dot += double(q[i]) * key(k + i);
        p[static_cast<size_t>(s)] = dot * a.scale;
        max_score = std::max(max_score, p[static_cast<size_t>(s)]);
      }
      double sum = 0;
      for (int64_t s = 0; s < visible; ++s) {
        p[static_cast<size_t>(s)] = std::exp(p[static_cast<size_t>(s)] - max_score);
        sum += p[static_cast<size_t>(s)];
      }
      float* o = a.out + t * a.out_row + h * a.out_head;
      for (int64_t i = 0; i < a.dv; ++i) {
        double acc = 0;
        for (int64_t s = 0; s < visible; ++s) {
          acc += p[static_cast<size_t>(s)] * value(s * a.v_row + kh * a.v_head + i);
        }
        o[i] = static_cast<float>(acc / sum);
      }
    }
  }
}

}  // namespace whale::ops
