#include "kernels/gemm.hpp"

namespace rmt::kernels {

template <typename T>
void gemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                    const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                    const T* bias, bool relu) {
    for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
            double s = 0;
            for (int64_t k = 0; k < K; ++k) {
                const T a = trans_a ? A[k * lda + i] : A[i * lda + k];
                const T b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
                s += double(a) * double(b);
            }
            T& c = C[i * ldc + j];
            const double b = bias ? double(bias[j]) : 0.0;
            c = beta == T(0) ? T(alpha * s + b) : T(alpha * s + beta * double(c) + b);
            if (relu) c = c > T(0) ? c : T(0);
        }
    }
}

template void gemm_reference<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*,
                                    int64_t, const float*, int64_t, float, float*, int64_t,
                                    const float*, bool);
template void gemm_reference<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                                     int64_t, const double*, int64_t, double, double*, int64_t,
                                     const double*, bool);

}  // namespace rmt::kernels
