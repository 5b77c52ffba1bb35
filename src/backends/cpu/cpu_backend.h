// The CPU backend: every op threaded over the pool, inner loops vectorised for the best
// instruction set the machine has (chosen at run time; the portable path stays testable).
#pragma once

#include <vector>

#include "backends/cpu/amx_kernels.h"
#include "backends/cpu/isa.h"
#include "backends/cpu/attention_kernels.h"
#include "backends/cpu/vector_kernels.h"
#include "core/thread_pool.h"
#include "ops/backend.h"

namespace whale::cpu {

class CpuBackend final : public ops::Backend {
 public:
  explicit CpuBackend(ThreadPool& pool, Isa isa = best_isa());
  std::string_view name() const override { return isa_name(isa_); }
  Isa isa() const { return isa_; }

  void matmul(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
              const ops::Matrix& w) const override;
  void matmul_t(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n,
                const ops::Matrix& w) const override;
  void matmul_batch(std::span<const ops::MatmulTask> tasks) const override;
  void rmsnorm(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t n, int64_t dim,
               const ops::Matrix& weight, float eps) const override;
  void embedding(float* y, const ops::Matrix& table, const int32_t* ids, int64_t n) const override;
  void rope(float* x, int64_t ld, int64_t head_stride, int64_t n, int64_t n_heads, int64_t rope_dim,
            const int32_t* pos, const float* inv_freq, float amplitude) const override;
  void swiglu(float* y, int64_t ldy, const float* gate, const float* up, int64_t ld_in, int64_t n,
              int64_t dim) const override;
  void attention(const ops::AttentionArgs& a) const override;

 private:
  // Output columns [r0, r1) of a task (weight rows r0..r1). `batch` numbers the matmul_batch
  // call (a thread reuses its prepared activations within one). `amx`, when given, holds the
  // task's activations in tile order.
  void matmul_rows(const ops::MatmulTask& t, int64_t r0, int64_t r1, uint64_t batch,
                   const AmxActivations* amx = nullptr) const;
  bool use_amx(const ops::MatmulTask& t) const;
  void matmul_cols(const ops::MatmulTask& t, int64_t c0, int64_t c1) const;
  // attention() where every query head shares one kv head.
  void multi_query_attention(const ops::AttentionArgs& a) const;

  ThreadPool& pool_;
  Isa isa_;
  float (*dot_)(const float*, const float*, int64_t);
  Bf16RowsKernel bf16_;
  void (*axpy_)(float*, const float*, float, int64_t);  // y += a·x
  AxpyBf16Fn axpy_bf16_;
  AxpyQ8Fn axpy_q8_;
  AttentionBlockFn attention_;
  MultiQueryFn multi_query_;
  MultiQueryFn multi_query_bf16_;
  SwigluFn swiglu_;
};

}  // namespace whale::cpu
