// Matrix products for training, through OpenBLAS (Debian's libopenblas-dev): row-major, in
// float for training and in double for the finite-difference checks of the backward passes.
// The three products of a linear layer y = x·Wᵀ (W is [out, in], as checkpoints store it):
//   forward           y[n, out]  = x[n, in] · W[out, in]ᵀ
//   input gradient    dx[n, in] += dy[n, out] · W[out, in]
//   weight gradient   dW[out, in] += dy[n, out]ᵀ · x[n, in]
#pragma once

#include <cblas.h>

#include <cstdint>

namespace whale::train {

// C[m, n] = alpha·op(A)[m, k]·op(B)[k, n] + beta·C, every matrix row-major with its leading dim.
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
                 int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// y[n, out] = x[n, in]·W[out, in]ᵀ
template <class T>
void linear_forward(T* y, const T* x, const T* w, int64_t n, int64_t out, int64_t in) {
  gemm(false, true, n, out, in, T(1), x, in, w, in, T(0), y, out);
}

// dx[n, in] += dy·W (when dx is not null); dW[out, in] += dyᵀ·x.
template <class T>
void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t out,
                     int64_t in) {
  if (dx != nullptr) gemm(false, false, n, in, out, T(1), dy, out, w, in, T(1), dx, in);
  gemm(true, false, out, in, n, T(1), dy, out, x, in, T(1), dw, in);
}

}  // namespace whale::train
