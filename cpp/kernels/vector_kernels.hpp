// SIMD vector kernels, written once against xsimd and instantiated per ISA in isa_<arch>.cpp.
// Only those translation units include this header: nothing else is compiled for an ISA the
// CPU may lack. Each kernel has a scalar twin in vector_reference.hpp.
#pragma once
#include <cmath>
#include <cstdint>
#include <xsimd/xsimd.hpp>

#include "kernels/vector_reference.hpp"

namespace rmt::kernels::simd {

template <class Arch, typename T>
T dot(const T* x, const T* y, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    // Four accumulators hide the FMA latency.
    batch s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        s0 = xsimd::fma(batch::load_unaligned(x + i), batch::load_unaligned(y + i), s0);
        s1 = xsimd::fma(batch::load_unaligned(x + i + W), batch::load_unaligned(y + i + W), s1);
        s2 = xsimd::fma(batch::load_unaligned(x + i + 2 * W), batch::load_unaligned(y + i + 2 * W), s2);
        s3 = xsimd::fma(batch::load_unaligned(x + i + 3 * W), batch::load_unaligned(y + i + 3 * W), s3);
    }
    for (; i + W <= n; i += W) s0 = xsimd::fma(batch::load_unaligned(x + i), batch::load_unaligned(y + i), s0);
    T s = xsimd::hadd((s0 + s1) + (s2 + s3));
    for (; i < n; ++i) s += x[i] * y[i];
    return s;
}

template <class Arch, typename T>
void axpy(T a, const T* x, T* y, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch va(a);
    int64_t i = 0;
    for (; i + W <= n; i += W) xsimd::fma(va, batch::load_unaligned(x + i), batch::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += a * x[i];
}

template <class Arch, typename T>
T max(const T* x, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    if (n < W) return reference::max(x, n);
    batch m = batch::load_unaligned(x);
    int64_t i = W;
    for (; i + W <= n; i += W) m = xsimd::max(m, batch::load_unaligned(x + i));
    alignas(64) T lanes[W];
    m.store_aligned(lanes);
    T r = lanes[0];
    for (int64_t l = 1; l < W; ++l) r = lanes[l] > r ? lanes[l] : r;
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
}

template <class Arch, typename T>
T exp_shift_sum(T* x, T shift, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch vshift(shift);
    batch s(T(0));
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        batch e = xsimd::exp(batch::load_unaligned(x + i) - vshift);
        e.store_unaligned(x + i);
        s += e;
    }
    T r = xsimd::hadd(s);
    for (; i < n; ++i) {
        x[i] = std::exp(x[i] - shift);
        r += x[i];
    }
    return r;
}

template <class Arch, typename T>
void scale(T* x, T a, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch va(a);
    int64_t i = 0;
    for (; i + W <= n; i += W) (batch::load_unaligned(x + i) * va).store_unaligned(x + i);
    for (; i < n; ++i) x[i] *= a;
}

template <class Arch, typename T>
void adamw(T* param, const T* grad, T* m, T* v, int64_t n, T lr, T beta1, T beta2, T eps,
           T weight_decay_factor, T bias_correction1, T bias_correction2_sqrt) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch b1(beta1), b2(beta2), one_b1(1 - beta1), one_b2(1 - beta2), veps(eps),
        decay(weight_decay_factor), step(lr / bias_correction1), inv_bc2(T(1) / bias_correction2_sqrt);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const batch g = batch::load_unaligned(grad + i);
        const batch mi = xsimd::fma(b1, batch::load_unaligned(m + i), one_b1 * g);
        const batch vi = xsimd::fma(b2, batch::load_unaligned(v + i), one_b2 * g * g);
        mi.store_unaligned(m + i);
        vi.store_unaligned(v + i);
        const batch denom = xsimd::sqrt(vi) * inv_bc2 + veps;
        (batch::load_unaligned(param + i) * decay - step * mi / denom).store_unaligned(param + i);
    }
    reference::adamw(param + i, grad + i, m + i, v + i, n - i, lr, beta1, beta2, eps,
                     weight_decay_factor, bias_correction1, bias_correction2_sqrt);
}

template <class Arch, typename T>
void gelu(T* out, const T* inp, int64_t n, bool tanh_approximation) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch half(T(0.5)), one(T(1));
    int64_t i = 0;
    if (tanh_approximation) {
        const batch a(T(reference::kGeluSqrt2OverPi)), c(T(reference::kGeluTanhCoeff));
        for (; i + W <= n; i += W) {
            const batch x = batch::load_unaligned(inp + i);
            const batch inner = a * xsimd::fma(c * x * x, x, x);
            (half * x * (one + xsimd::tanh(inner))).store_unaligned(out + i);
        }
    } else {
        const batch r(T(reference::kGeluSqrt1_2));
        for (; i + W <= n; i += W) {
            const batch x = batch::load_unaligned(inp + i);
            (half * x * (one + xsimd::erf(x * r))).store_unaligned(out + i);
        }
    }
    reference::gelu(out + i, inp + i, n - i, tanh_approximation);
}

template <class Arch, typename T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch half(T(0.5)), one(T(1));
    int64_t i = 0;
    if (tanh_approximation) {
        const batch a(T(reference::kGeluSqrt2OverPi)), c(T(reference::kGeluTanhCoeff)),
            c3(T(3 * reference::kGeluTanhCoeff));
        for (; i + W <= n; i += W) {
            const batch x = batch::load_unaligned(inp + i);
            const batch x2 = x * x;
            const batch t = xsimd::tanh(a * xsimd::fma(c * x2, x, x));
            const batch dinner = a * xsimd::fma(c3, x2, one);
            const batch grad = half * (one + t) + half * x * xsimd::fnma(t, t, one) * dinner;
            xsimd::fma(batch::load_unaligned(dout + i), grad, batch::load_unaligned(dinp + i))
                .store_unaligned(dinp + i);
        }
    } else {
        const batch r(T(reference::kGeluSqrt1_2)), p(T(reference::kGeluInvSqrt2Pi)),
            minus_half(T(-0.5));
        for (; i + W <= n; i += W) {
            const batch x = batch::load_unaligned(inp + i);
            const batch cdf = half * (one + xsimd::erf(x * r));
            const batch pdf = p * xsimd::exp(minus_half * x * x);
            const batch grad = xsimd::fma(x, pdf, cdf);
            xsimd::fma(batch::load_unaligned(dout + i), grad, batch::load_unaligned(dinp + i))
                .store_unaligned(dinp + i);
        }
    }
    reference::gelu_backward(dinp + i, dout + i, inp + i, n - i, tanh_approximation);
}

template <class Arch, typename T>
VectorKernels<T> make_vector_kernels() {
    return VectorKernels<T>{&dot<Arch, T>,   &axpy<Arch, T>,  &max<Arch, T>,
                            &exp_shift_sum<Arch, T>, &scale<Arch, T>, &adamw<Arch, T>,
                            &gelu<Arch, T>,  &gelu_backward<Arch, T>};
}

}  // namespace rmt::kernels::simd
