// Matrix products for training, through OpenBLAS (Debian's libopenblas-dev): row-major, in
// float for training and in double for the finite-difference checks of the backward passes.
// OpenBLAS runs single-threaded (use_single_threaded_blas); whale's own pool splits each product
// by output rows or columns. With both OpenBLAS's threads and the pool's, each set spun or
// yielded while the other worked, which cost a quarter of a training step on two cores.
// The three products of a linear layer y = x·Wᵀ (W is [out, in], as checkpoints store it):
//   forward           y[n, out]  = x[n, in] · W[out, in]ᵀ
//   input gradient    dx[n, in] += dy[n, out] · W[out, in]
//   weight gradient   dW[out, in] += dy[n, out]ᵀ · x[n, in]
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>

#include "core/thread_pool.h"

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

// Makes OpenBLAS run each call on the calling thread (process-wide).
void use_single_threaded_blas();

// gemm() split over the pool: by rows of C when there are enough, else by columns. The split
// depends only on the shape and the pool's size, so results repeat exactly for a given size.
template <class T>
void parallel_gemm(ThreadPool& pool, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                   T alpha, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                   int64_t ldc) {
  const int64_t parts = pool.size();
  if (parts <= 1 || m * n * k < (int64_t{1} << 16)) {
    gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (m >= 16 * parts || m >= n) {
    pool.parallel_for(parts, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t i0 = m * p / parts, i1 = m * (p + 1) / parts;
        gemm(trans_a, trans_b, i1 - i0, n, k, alpha, trans_a ? a + i0 : a + i0 * lda, lda, b, ldb,
             beta, c + i0 * ldc, ldc);
      }
    });
  } else {
    pool.parallel_for(parts, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t j0 = n * p / parts, j1 = n * (p + 1) / parts;
        gemm(trans_a, trans_b, m, j1 - j0, k, alpha, a, lda, trans_b ? b + j0 * ldb : b + j0, ldb,
             beta, c + j0, ldc);
      }
    });
  }
}

// y[n, out] = x[n, in]·W[out, in]ᵀ
template <class T>
void linear_forward(ThreadPool& pool, T* y, const T* x, const T* w, int64_t n, int64_t out,
                    int64_t in) {
  parallel_gemm(pool, false, true, n, out, in, T(1), x, in, w, in, T(0), y, out);
}

// dx[n, in] += dy·W (when dx is not null); dW[out, in] += dyᵀ·x.
template <class T>
void linear_backward(ThreadPool& pool, T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n,
                     int64_t out, int64_t in) {
  if (dx != nullptr) parallel_gemm(pool, false, false, n, in, out, T(1), dy, out, w, in, T(1), dx, in);
  parallel_gemm(pool, true, false, out, in, n, T(1), dy, out, x, in, T(1), dw, in);
}

}  // namespace whale::train
