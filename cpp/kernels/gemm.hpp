// GEMM: C = alpha * op(A) * op(B) + beta * C, row-major, with op(X) = X or X^T.
//
// The three orientations the backward pass needs come from the trans flags without ever
// materialising a transpose:  Y = X W^T  -> gemm(false, true, ...)
//                             dX = dY W  -> gemm(false, false, ...)
//                             dW += dY^T X -> gemm(true, false, ..., beta = 1)
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are the row strides of A, B, C as
// stored. beta == 0 overwrites C without reading it. bias (N values, or nullptr) is added to every
// row once, C = alpha op(A) op(B) + beta C + bias, as the first K slice stores its tiles: a
// linear layer's bias needs no pass of its own over the output. relu: C = max(that, 0) instead
// (NaN -> 0, as ops::relu_forward), applied as the last K slice stores its tiles: the fused
// bias + ReLU of a feed-forward layer's first linear.
#pragma once
#include <cstdint>

namespace rmt::kernels {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
          const T* bias = nullptr, bool relu = false);

// Columns of op(B) per packed slice (the NC of the blocking; KC and MC come with the micro-kernel).
int64_t gemm_nc();

// The plain triple loop every fast path is tested against (accumulates in double).
template <typename T>
void gemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                    const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                    const T* bias = nullptr, bool relu = false);

}  // namespace rmt::kernels
