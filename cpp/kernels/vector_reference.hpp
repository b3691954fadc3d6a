// Scalar reference for every vector kernel: the plain loop each SIMD version is tested against,
// and the kernels of the "scalar" ISA.
#pragma once
#include <cmath>
#include <cstdint>

namespace rmt::kernels::reference {
// Internal linkage: the ISA translation units include these too, and an AVX-512 copy must never
// be merged by the linker into the baseline code.
namespace {

template <typename T>
T dot(const T* x, const T* y, int64_t n) {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
    return s;
}

template <typename T>
void axpy(T a, const T* x, T* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
T max(const T* x, int64_t n) {
    T m = x[0];
    for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

template <typename T>
T exp_shift_sum(T* x, T shift, int64_t n) {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - shift);
        s += x[i];
    }
    return s;
}

template <typename T>
void scale(T* x, T a, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// param -= lr * (m_hat / (sqrt(v_hat) + eps)) after decoupled decay param *= weight_decay_factor.
// m_hat = m / bias_correction1, sqrt(v_hat) = sqrt(v) / bias_correction2_sqrt (PyTorch's order).
template <typename T>
void adamw(T* param, const T* grad, T* m, T* v, int64_t n, T lr, T beta1, T beta2, T eps,
           T weight_decay_factor, T bias_correction1, T bias_correction2_sqrt) {
    const T step = lr / bias_correction1;
    for (int64_t i = 0; i < n; ++i) {
        const T g = grad[i];
        m[i] = beta1 * m[i] + (1 - beta1) * g;
        v[i] = beta2 * v[i] + (1 - beta2) * g * g;
        const T denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
        param[i] = param[i] * weight_decay_factor - step * m[i] / denom;
    }
}

// One row of LayerNorm: out = (x - mean) * rstd * weight + bias, mean and rstd = 1 / sqrt(var +
// eps) (biased variance, as nn.LayerNorm) returned. Two passes in double: the variance of
// (x - mean) does not cancel catastrophically.
template <typename T>
void layernorm_row(T* out, const T* x, const T* weight, const T* bias, int64_t n, T eps, T* mean,
                   T* rstd) {
    double s = 0;
    for (int64_t c = 0; c < n; ++c) s += double(x[c]);
    const double mu = s / double(n);
    double ss = 0;
    for (int64_t c = 0; c < n; ++c) {
        const double d = double(x[c]) - mu;
        ss += d * d;
    }
    const T m = T(mu);
    const T r = T(1.0 / std::sqrt(ss / double(n) + double(eps)));
    for (int64_t c = 0; c < n; ++c) out[c] = (x[c] - m) * r * weight[c] + bias[c];
    *mean = m;
    *rstd = r;
}

template <typename T>
void layernorm_rows(T* out, const T* x, const T* weight, const T* bias, int64_t rows, int64_t n,
                    T eps, T* mean, T* rstd) {
    for (int64_t r = 0; r < rows; ++r)
        layernorm_row(out + r * n, x + r * n, weight, bias, n, eps, mean + r, rstd + r);
}

// dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * weight,
// xhat = (x - mean) * rstd: the input gradient of one LayerNorm row.
template <typename T>
void layernorm_row_backward(T* dx, const T* dy, const T* x, const T* weight, T mean, T rstd,
                            int64_t n) {
    double sum_dxhat = 0, sum_dxhat_xhat = 0;
    for (int64_t c = 0; c < n; ++c) {
        const T xhat = (x[c] - mean) * rstd;
        const T dxhat = dy[c] * weight[c];
        sum_dxhat += double(dxhat);
        sum_dxhat_xhat += double(dxhat) * double(xhat);
    }
    const T mean_dxhat = T(sum_dxhat / double(n));
    const T mean_dxhat_xhat = T(sum_dxhat_xhat / double(n));
    for (int64_t c = 0; c < n; ++c) {
        const T xhat = (x[c] - mean) * rstd;
        const T dxhat = dy[c] * weight[c];
        dx[c] += rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    }
}

// dst (cols x rows, row stride ld_dst) = src (rows x cols, row stride ld_src) transposed.
template <typename T>
void transpose(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

// y (rows x cols, row stride ldy) += x (rows x cols, row stride ldx); sums (cols values), when
// not null, += the column sums of x, a row at a time in row order. y null: the sums alone.
template <typename T>
void add_rows(T* y, int64_t ldy, const T* x, int64_t ldx, int64_t rows, int64_t cols, T* sums) {
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            if (y) y[i * ldy + j] += x[i * ldx + j];
            if (sums) sums[j] += x[i * ldx + j];
        }
}

// out (rows x cols, row stride ld_out) = x (rows x cols, row stride ldx) + bias (cols) on
// every row; out and x do not overlap.
template <typename T>
void add_bias_rows(T* out, int64_t ld_out, const T* x, int64_t ldx, const T* bias, int64_t rows,
                   int64_t cols) {
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) out[i * ld_out + j] = x[i * ldx + j] + bias[j];
}

// out = softmax(in) over n >= 1 values (max-shifted), row by row; out may be in.
template <typename T>
void softmax_rows(T* out, int64_t ld_out, const T* in, int64_t ld_in, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
        const T* x = in + r * ld_in;
        T* y = out + r * ld_out;
        T mx = x[0];
        for (int64_t i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
        T s = 0;
        for (int64_t i = 0; i < n; ++i) {
            y[i] = std::exp(x[i] - mx);
            s += y[i];
        }
        const T inv = T(1) / s;
        for (int64_t i = 0; i < n; ++i) y[i] *= inv;
    }
}

// C (M x N, ldc) = alpha * A B (K x N, ldb), or C += that with accumulate; all row-major, with
// A(i, k) = A[i * a_rs + k * a_cs]: strides (lda, 1) for A stored M x K, (1, lda) for A^T stored
// K x M. The unpacked GEMM for the many tiny products of attention heads, where packing and the
// blocked GEMM's set-up cost more than the arithmetic.
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_rs, int64_t a_cs,
                const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            T s = 0;
            for (int64_t k = 0; k < K; ++k) s += A[i * a_rs + k * a_cs] * B[k * ldb + j];
            C[i * ldc + j] = accumulate ? C[i * ldc + j] + alpha * s : alpha * s;
        }
}

// dinp += dout where inp > 0 (the ReLU's gradient; 0 at inp = 0, as PyTorch).
template <typename T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dinp[i] += inp[i] > T(0) ? dout[i] : T(0);
}

// GELU with PyTorch's constants (aten/src/ATen/native/cpu/Activation.cpp): the exact
// x/2 (1 + erf(x / sqrt 2)), or with tanh_approximation x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
constexpr double kGeluSqrt1_2 = 0.70710678118654752440;      // 1 / sqrt(2)
constexpr double kGeluInvSqrt2Pi = 0.39894228040143267794;   // 1 / sqrt(2 pi)
constexpr double kGeluSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluTanhCoeff = 0.044715;

template <typename T>
void gelu(T* out, const T* inp, int64_t n, bool tanh_approximation) {
    for (int64_t i = 0; i < n; ++i) {
        const T x = inp[i];
        if (tanh_approximation) {
            const T inner = T(kGeluSqrt2OverPi) * (x + T(kGeluTanhCoeff) * x * x * x);
            out[i] = T(0.5) * x * (T(1) + std::tanh(inner));
        } else {
            out[i] = T(0.5) * x * (T(1) + std::erf(x * T(kGeluSqrt1_2)));
        }
    }
}

// dinp += dout * gelu'(inp)
template <typename T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation) {
    for (int64_t i = 0; i < n; ++i) {
        const T x = inp[i];
        T grad;
        if (tanh_approximation) {
            // (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(inner)
            const T inner = T(kGeluSqrt2OverPi) * (x + T(kGeluTanhCoeff) * x * x * x);
            const T t = std::tanh(inner);
            const T dinner = T(kGeluSqrt2OverPi) * (T(1) + T(3 * kGeluTanhCoeff) * x * x);
            grad = T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner;
        } else {
            // Phi(x) + x phi(x)
            const T cdf = T(0.5) * (T(1) + std::erf(x * T(kGeluSqrt1_2)));
            const T pdf = T(kGeluInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
            grad = cdf + x * pdf;
        }
        dinp[i] += dout[i] * grad;
    }
}

}  // namespace
}  // namespace rmt::kernels::reference
