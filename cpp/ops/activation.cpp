#include "ops/activation.hpp"

#include <cmath>

#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

bool worth_threads(int64_t work) {
    return work >= (int64_t(1) << 16) && !kernels::in_parallel_region() &&
           kernels::get_num_threads() > 1;
}

// PyTorch's constants (aten/src/ATen/native/cpu/Activation.cpp).
constexpr double kSqrt1_2 = 0.70710678118654752440;       // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;    // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;   // sqrt(2 / pi)
constexpr double kTanhCoeff = 0.044715;

}  // namespace

template <typename T>
void relu_forward(T* out, const T* inp, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = inp[i] > T(0) ? inp[i] : T(0);
}

template <typename T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dinp[i] += inp[i] > T(0) ? dout[i] : T(0);
}

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n, bool tanh_approximation) {
    const bool parallel = worth_threads(n);
    if (tanh_approximation) {
        // gelu(x) = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t i = 0; i < n; ++i) {
            const T x = inp[i];
            const T inner = T(kSqrt2OverPi) * (x + T(kTanhCoeff) * x * x * x);
            out[i] = T(0.5) * x * (T(1) + std::tanh(inner));
        }
    } else {
        // gelu(x) = x/2 (1 + erf(x / sqrt(2)))
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t i = 0; i < n; ++i) {
            const T x = inp[i];
            out[i] = T(0.5) * x * (T(1) + std::erf(x * T(kSqrt1_2)));
        }
    }
}

template <typename T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation) {
    const bool parallel = worth_threads(n);
    if (tanh_approximation) {
        // d/dx: (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(inner)
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t i = 0; i < n; ++i) {
            const T x = inp[i];
            const T inner = T(kSqrt2OverPi) * (x + T(kTanhCoeff) * x * x * x);
            const T t = std::tanh(inner);
            const T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * kTanhCoeff) * x * x);
            const T grad = T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner;
            dinp[i] += dout[i] * grad;
        }
    } else {
        // d/dx: Phi(x) + x phi(x)
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t i = 0; i < n; ++i) {
            const T x = inp[i];
            const T cdf = T(0.5) * (T(1) + std::erf(x * T(kSqrt1_2)));
            const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
            dinp[i] += dout[i] * (cdf + x * pdf);
        }
    }
}

template void relu_forward<float>(float*, const float*, int64_t);
template void relu_forward<double>(double*, const double*, int64_t);
template void relu_backward<float>(float*, const float*, const float*, int64_t);
template void relu_backward<double>(double*, const double*, const double*, int64_t);
template void gelu_forward<float>(float*, const float*, int64_t, bool);
template void gelu_forward<double>(double*, const double*, int64_t, bool);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, bool);
template void gelu_backward<double>(double*, const double*, const double*, int64_t, bool);

}  // namespace rmt::ops
