// Scalar reference for every op: slow, single-threaded, double accumulation, obviously right.
// Every fast kernel is tested against it.
#pragma once

#include "ops/backend.h"

namespace whale::ops {

class RefBackend final : public Backend {
 public:
  std::string_view name() const override { return "ref"; }
  void matmul(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
              const Matrix& w) const override;
  void matmul_t(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                const Matrix& w) const override;
  void rmsnorm(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n, int64_t dim,
               const Matrix& weight, float eps) const override;
  void embedding(float* y, const Matrix& table, const int32_t* ids, int64_t n) const override;
  void rope(float* x, int64_t ld, int64_t head_stride, int64_t n, int64_t n_heads, int64_t rope_dim,
            const int32_t* pos, const float* inv_freq, float amplitude) const override;
  void swiglu(float* y, int64_t ldy, const float* gate, const float* up, int64_t ld_in, int64_t n,
              int64_t dim) const override;
  void attention(const AttentionArgs& a) const override;
};

}  // namespace whale::ops
