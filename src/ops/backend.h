// The narrow set of operations the model is written in. A backend implements them; the model
// calls them and never sees a backend's internals. All activations are f32, row-major, with
// explicit row strides ("ld", in elements) so that views into larger buffers need no copies.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "ops/matrix.h"

namespace whale::ops {

// Causal attention of n_q query rows over n_kv key rows, for one sequence. Query row t sits at
// position q_pos[t] and sees keys 0..q_pos[t]. Key/value heads are shared by query heads in
// groups (kv_heads == 1 is multi-query attention, as absorbed MLA uses).
struct AttentionArgs {
  int64_t n_q = 0, n_kv = 0;
  int64_t n_heads = 0, kv_heads = 0;
  int64_t dk = 0, dv = 0;
  const float* q = nullptr;  // [n_q, n_heads, dk] via strides
  int64_t q_row = 0, q_head = 0;
  const float* k = nullptr;  // [n_kv, kv_heads, dk]
  int64_t k_row = 0, k_head = 0;
  const float* v = nullptr;  // [n_kv, kv_heads, dv]
  int64_t v_row = 0, v_head = 0;
  float* out = nullptr;  // [n_q, n_heads, dv]
  int64_t out_row = 0, out_head = 0;
  const int32_t* q_pos = nullptr;  // [n_q]
  float scale = 1.0f;              // applied to q·k before the softmax
  // Keys and values stored as bf16 (a bf16 KV cache), with the same strides, in place of k
  // and v: for multi-query attention (kv_heads == 1) only.
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
};

// One product of a batch: y[n, w.rows] = x · wᵀ, or y[n, w.cols] = x · w when transposed.
struct MatmulTask {
  float* y = nullptr;
  int64_t ldy = 0;
  const float* x = nullptr;
  int64_t ldx = 0;
  int64_t n = 0;
  Matrix w;
  bool transposed = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // y[n, w.rows] = x[n, w.cols] · wᵀ
  virtual void matmul(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                      const Matrix& w) const = 0;
  // y[n, w.cols] = x[n, w.rows] · w   (absorbed MLA multiplies by W_UK from this side)
  virtual void matmul_t(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                        const Matrix& w) const = 0;
  // Independent products (no task reads another's output), which a backend may run as one job
  // across its threads: decode multiplies many small matrices (heads, experts) per layer.
  virtual void matmul_batch(std::span<const MatmulTask> tasks) const {
    for (const MatmulTask& t : tasks) {
      if (t.transposed) {
        matmul_t(t.y, t.ldy, t.x, t.ldx, t.n, t.w);
      } else {
        matmul(t.y, t.ldy, t.x, t.ldx, t.n, t.w);
      }
    }
  }
  // y = x / sqrt(mean(x²) + eps) ⊙ weight, per row of `dim`; weight is a [1, dim] matrix.
  virtual void rmsnorm(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n, int64_t dim,
                       const Matrix& weight, float eps) const = 0;
  // y[i, :] = table[ids[i], :]
  virtual void embedding(float* y, const Matrix& table, const int32_t* ids, int64_t n) const = 0;
  // In-place rotary embedding of adjacent pairs (x[2i], x[2i+1]) by angle pos·inv_freq[i],
  // scaled by `amplitude`, for rope_dim dims at x + row·ld + head·head_stride.
  virtual void rope(float* x, int64_t ld, int64_t head_stride, int64_t n, int64_t n_heads,
                    int64_t rope_dim, const int32_t* pos, const float* inv_freq,
                    float amplitude) const = 0;
  // y[i] = silu(gate[i]) · up[i] for n rows of dim, gate and up with their own strides.
  virtual void swiglu(float* y, int64_t ldy, const float* gate, const float* up, int64_t ld_in,
                      int64_t n, int64_t dim) const = 0;
  virtual void attention(const AttentionArgs& a) const = 0;
};

}  // namespace whale::ops
