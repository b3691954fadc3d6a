// SIMD vector kernels, written once against xsimd and instantiated per ISA in isa_<arch>.cpp.
// Only those translation units include this header: nothing else is compiled for an ISA the
// CPU may lack. Each kernel has a scalar twin in vector_reference.hpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <type_traits>
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

// Lane i of the result is lane (i + Shift) mod W of x: the rotations of the reductions below.
template <std::size_t Shift>
struct RotateLanes {
    static constexpr std::size_t get(std::size_t i, std::size_t n) { return (i + Shift) % n; }
};

template <class Arch, typename T>
using lane_index_batch =
    xsimd::batch<std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>, Arch>;

// The maximum (kSum: the sum) of x's lanes in every lane: log2(W) rotate-and-combine steps, so
// the dependency chain is 4 steps deep on AVX-512 floats instead of the 15 of a scalar loop over
// the stored lanes, and the result needs no broadcast (xsimd 8.1 has no horizontal max).
template <class Arch, typename T, bool kSum, std::size_t Shift = xsimd::batch<T, Arch>::size / 2>
xsimd::batch<T, Arch> all_lanes_reduce(xsimd::batch<T, Arch> x) {
    if constexpr (Shift == 0) {
        return x;
    } else {
        const auto rotated = xsimd::swizzle(
            x, xsimd::make_batch_constant<lane_index_batch<Arch, T>, RotateLanes<Shift>>());
        x = kSum ? x + rotated : xsimd::max(x, rotated);
        return all_lanes_reduce<Arch, T, kSum, Shift / 2>(x);
    }
}

// Lanes [first, W) of a vector: the lanes of the overlapping last vector of a row that the
// whole vectors before it have not covered.
template <class Arch, typename T>
xsimd::batch_bool<T, Arch> lanes_from(int64_t first) {
    using batch = xsimd::batch<T, Arch>;
    alignas(64) T index[batch::size];
    for (std::size_t l = 0; l < batch::size; ++l) index[l] = T(l);
    return batch::load_aligned(index) >= batch(T(first));
}

// exp(x) for the arguments softmax and the log-sum-exp pass (x - max <= 0; valid up to about
// +88.37, +inf above), in float: 13 vector operations where xsimd::exp takes 18, which at the attention's
// short rows is most of a softmax. x = n ln2 + r with n = round(x log2 e), found by adding a
// magic constant whose float spacing is 1 (so the sum's low bits also hold n + 127, the
// exponent field of 2^n, with no conversion to int); r from n by a two-part ln2 (Cody-Waite), so
// r is exact to an ulp; e^r by a degree-5 polynomial fitted for relative error on |r| <= ln2/2
// (2.1e-7 evaluated in float, against xsimd's 1 ulp). Below -87.34, where 2^n leaves the
// normal range, the result is 0 (as xsimd's); NaN stays NaN. Doubles keep xsimd::exp.
template <class Arch, typename T>
xsimd::batch<T, Arch> exp_of_nonpositive(const xsimd::batch<T, Arch>& x) {
    if constexpr (!std::is_same_v<T, float>) {
        return xsimd::exp(x);
    } else {
        using batch = xsimd::batch<float, Arch>;
        using int_batch = xsimd::batch<int32_t, Arch>;
        const batch magic(12582912.0f + 127.0f);   // 1.5 * 2^23 + the exponent bias
        const batch y = xsimd::fma(x, batch(1.44269504088896341f), magic);
        const batch n = y - magic;
        batch r = xsimd::fnma(n, batch(0.693359375f), x);
        r = xsimd::fnma(n, batch(-2.12194440e-4f), r);
        batch p = xsimd::fma(batch(0.00829758308827877f), r, batch(0.04191524162888527f));
        p = xsimd::fma(p, r, batch(0.16667574644088745f));
        p = xsimd::fma(p, r, batch(0.49998897314071655f));
        p = xsimd::fma(p, r, batch(0.9999997019767761f));
        p = xsimd::fma(p, r, batch(1.0000001192092896f));
        const batch two_to_n = xsimd::bitwise_cast<batch>(xsimd::bitwise_cast<int_batch>(y) << 23);
        const batch e = xsimd::select(x < batch(-87.33654f), batch(0.0f), p * two_to_n);
        // above 88.37 the exponent field would wrap: +inf there, as xsimd::exp (a shift below
        // the row's max, which no internal caller passes, must not come back as garbage)
        return xsimd::select(x > batch(88.3762626647949f), batch(std::numeric_limits<float>::infinity()), e);
    }
}

// A row shorter than a vector (n < W) as one vector, padded with -inf (whose exp is exactly 0),
// and its way back.
template <class Arch, typename T>
xsimd::batch<T, Arch> load_short_row(const T* x, int64_t n) {
    alignas(64) T lanes[xsimd::batch<T, Arch>::size];
    std::fill(std::begin(lanes), std::end(lanes), -std::numeric_limits<T>::infinity());
    std::copy(x, x + n, lanes);
    return xsimd::batch<T, Arch>::load_aligned(lanes);
}

template <class Arch, typename T>
void store_short_row(T* x, int64_t n, const xsimd::batch<T, Arch>& v) {
    alignas(64) T lanes[xsimd::batch<T, Arch>::size];
    v.store_aligned(lanes);
    std::copy(lanes, lanes + n, x);
}

// The ragged end as softmax's: the overlapping last vector, read before anything is written.
template <class Arch, typename T>
T exp_shift_sum(T* x, T shift, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch vshift(shift);
    if (n < W) {
        const batch e = exp_of_nonpositive<Arch, T>(load_short_row<Arch>(x, n) - vshift);
        store_short_row<Arch>(x, n, e);
        return xsimd::hadd(e);
    }
    const int64_t whole = n / W * W;
    const bool ragged = whole < n;
    const batch e_last = ragged ? exp_of_nonpositive<Arch, T>(batch::load_unaligned(x + n - W) - vshift) : batch(T(0));
    batch s(T(0));
    for (int64_t i = 0; i < whole; i += W) {
        const batch e = exp_of_nonpositive<Arch, T>(batch::load_unaligned(x + i) - vshift);
        e.store_unaligned(x + i);
        s += e;
    }
    if (ragged) {
        s += xsimd::select(lanes_from<Arch, T>(W - (n - whole)), e_last, batch(T(0)));
        e_last.store_unaligned(x + n - W);
    }
    return xsimd::hadd(s);
}

// One row (n >= W) in three vector passes: the max of in, out = exp(in - max) and its sum, out
// scaled; tail_lanes = lanes_from(W - n % W), which the caller makes once for all its rows. Reading in and writing out apart lets the attention take its scores from a padded
// scratch without a copy: a vector load of rows just written by a copy (whose stores have other
// sizes and offsets) cannot be forwarded from the stores and waits for them. A ragged row ends
// with the overlapping vector in[n - W, n), read before anything is written (out may be in): its
// first lanes repeat elements of the last whole vector, which count once in the max (harmlessly
// twice) and are masked out of the sum; their exp is bitwise what the whole vectors got, so
// storing it last rewrites those lanes with what they already hold. The former scalar copy of
// the tail into a padded buffer, with its store-forwarding stall and a 16-step scalar max, cost
// as much as the exps at the attention's row lengths (segment plus memory: 76, 77, 140 keys).
template <class Arch, typename T>
void softmax_row(T* out, const T* in, int64_t n, const xsimd::batch_bool<T, Arch>& tail_lanes) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const int64_t whole = n / W * W;
    const bool ragged = whole < n;
    batch last = batch::load_unaligned(in + n - W);   // the last whole vector if !ragged
    batch m = last;
    for (int64_t i = 0; i < whole; i += W) m = xsimd::max(m, batch::load_unaligned(in + i));
    m = all_lanes_reduce<Arch, T, false>(m);
    batch s(T(0));
    for (int64_t i = 0; i < whole; i += W) {
        const batch e = exp_of_nonpositive<Arch, T>(batch::load_unaligned(in + i) - m);
        e.store_unaligned(out + i);
        s += e;
    }
    if (ragged) {
        last = exp_of_nonpositive<Arch, T>(last - m);
        s += xsimd::select(tail_lanes, last, batch(T(0)));
    }
    const batch inv = batch(T(1)) / all_lanes_reduce<Arch, T, true>(s);
    for (int64_t i = 0; i < whole; i += W)
        (batch::load_unaligned(out + i) * inv).store_unaligned(out + i);
    if (ragged) (last * inv).store_unaligned(out + n - W);
}

// Row by row. Interleaving four rows, to overlap one row's reductions and division with the
// next row's work, was tried and measured no faster: the exps set the pace. Rows shorter than a
// vector go through load_short_row.
template <class Arch, typename T>
void softmax_rows(T* out, int64_t ld_out, const T* in, int64_t ld_in, int64_t rows, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    // the lanes of a ragged row's overlapping last vector that count, the same for every row
    const auto tail_lanes = lanes_from<Arch, T>(W - (n - n / W * W));
    for (int64_t r = 0; r < rows; ++r) {
        if (n >= W) {
            softmax_row<Arch, T>(out + r * ld_out, in + r * ld_in, n, tail_lanes);
            continue;
        }
        const batch v = load_short_row<Arch>(in + r * ld_in, n);
        const batch e = exp_of_nonpositive<Arch, T>(v - all_lanes_reduce<Arch, T, false>(v));
        store_short_row<Arch>(out + r * ld_out, n, e / all_lanes_reduce<Arch, T, true>(e));
    }
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

// A select instead of a branch: with random signs the scalar loop mispredicts half the time.
template <class Arch, typename T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const batch zero(T(0));
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const batch g = xsimd::select(batch::load_unaligned(inp + i) > zero,
                                      batch::load_unaligned(dout + i), zero);
        (batch::load_unaligned(dinp + i) + g).store_unaligned(dinp + i);
    }
    reference::relu_backward(dinp + i, dout + i, inp + i, n - i);
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

// One R x V-vector block of C = alpha * A B (+ C): R x V accumulators stay in registers across
// all of K, and each k loads V vectors of B once for the R rows. A(r, k) is A[r * a_rs + k * a_cs],
// so a transposed A (stored K x M) is read in place: its elements are only ever broadcast.
template <class Arch, typename T, int R, int V>
inline void small_gemm_block(int64_t K, T alpha, const T* A, int64_t a_rs, int64_t a_cs,
                             const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    batch acc[R][V];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) acc[r][v] = batch(T(0));
    for (int64_t k = 0; k < K; ++k) {
        batch b[V];
        for (int v = 0; v < V; ++v) b[v] = batch::load_unaligned(B + k * ldb + v * W);
        const T* a_k = A + k * a_cs;
        for (int r = 0; r < R; ++r) {
            const batch a(a_k[r * a_rs]);
            for (int v = 0; v < V; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
        }
    }
    const batch va(alpha);
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) {
            T* c = C + r * ldc + v * W;
            if (accumulate) xsimd::fma(va, acc[r][v], batch::load_unaligned(c)).store_unaligned(c);
            else (va * acc[r][v]).store_unaligned(c);
        }
}

// R rows of C = alpha * A B (+ C): columns in blocks of VMAX vectors, then one block of the
// whole vectors left. Columns past the last whole vector go to the scalar loop: callers that care
// pad N to a multiple of 64 bytes.
template <class Arch, typename T, int R, int VMAX>
void small_gemm_rows(int64_t N, int64_t K, T alpha, const T* A, int64_t a_rs, int64_t a_cs,
                     const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
    constexpr int64_t W = xsimd::batch<T, Arch>::size;
    int64_t j = 0;
    for (; j + VMAX * W <= N; j += VMAX * W)
        small_gemm_block<Arch, T, R, VMAX>(K, alpha, A, a_rs, a_cs, B + j, ldb, C + j, ldc,
                                           accumulate);
    const int64_t rest = (N - j) / W;   // < VMAX
    if constexpr (VMAX > 3)
        if (rest == 3)
            small_gemm_block<Arch, T, R, 3>(K, alpha, A, a_rs, a_cs, B + j, ldb, C + j, ldc,
                                            accumulate);
    if constexpr (VMAX > 2)
        if (rest == 2)
            small_gemm_block<Arch, T, R, 2>(K, alpha, A, a_rs, a_cs, B + j, ldb, C + j, ldc,
                                            accumulate);
    if constexpr (VMAX > 1)
        if (rest == 1)
            small_gemm_block<Arch, T, R, 1>(K, alpha, A, a_rs, a_cs, B + j, ldb, C + j, ldc,
                                            accumulate);
    j += rest * W;
    if (j < N)
        reference::small_gemm(R, N - j, K, alpha, A, a_rs, a_cs, B + j, ldb, C + j, ldc,
                              accumulate);
}

template <class Arch, typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_rs, int64_t a_cs,
                const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
    // Enough independent FMA chains to cover the FMA latency on both ports, with the
    // accumulators, the B vectors of one k and a broadcast in the register file: eight rows share
    // each B load when the output is one vector wide (an attention head of 16 floats). Otherwise,
    // with AVX-512's 32 registers, six rows of up to four vectors (24 accumulators: an attention
    // head of 64 floats in one block); with AVX2's 16, six rows of up to two (12). Then four rows,
    // then one.
    constexpr int64_t W = xsimd::batch<T, Arch>::size;
    constexpr int VMAX = sizeof(T) * W >= 64 ? 4 : 2;
    int64_t i = 0;
    if (N <= W)
        for (; i + 8 <= M; i += 8)
            small_gemm_rows<Arch, T, 8, 1>(N, K, alpha, A + i * a_rs, a_rs, a_cs, B, ldb,
                                           C + i * ldc, ldc, accumulate);
    for (; i + 6 <= M; i += 6)
        small_gemm_rows<Arch, T, 6, VMAX>(N, K, alpha, A + i * a_rs, a_rs, a_cs, B, ldb,
                                          C + i * ldc, ldc, accumulate);
    for (; i + 4 <= M; i += 4)
        small_gemm_rows<Arch, T, 4, VMAX>(N, K, alpha, A + i * a_rs, a_rs, a_cs, B, ldb,
                                          C + i * ldc, ldc, accumulate);
    for (; i < M; ++i)
        small_gemm_rows<Arch, T, 1, VMAX>(N, K, alpha, A + i * a_rs, a_rs, a_cs, B, ldb,
                                          C + i * ldc, ldc, accumulate);
}

// LayerNorm of R rows (n >= W, row stride n) at once: each lane sums its own elements (W partial
// sums), so the rounding error stays well below the serial float sum's; the second pass sums
// squares of (x - mean), which do not cancel. A ragged row ends with the overlapping vector
// x[n - W, n), its lanes already counted masked out of the sums. The rows are interleaved: one
// row alone is a chain of latencies (two lane reductions, a square root and a division) several
// times longer than its arithmetic at the models' widths (64 to 512), and R independent chains
// overlap.
template <class Arch, typename T, int R>
void layernorm_row_group(T* out, const T* x, const T* weight, const T* bias, int64_t n, T eps,
                         T* mean, T* rstd) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const int64_t whole = n / W * W;
    const bool ragged = whole < n;
    const auto tail = lanes_from<Arch, T>(W - (n - whole));
    const batch zero(T(0)), inv_n(T(1) / T(n));
    batch m[R], q[R];
    for (int r = 0; r < R; ++r) {
        const T* xr = x + r * n;
        batch s = ragged ? xsimd::select(tail, batch::load_unaligned(xr + n - W), zero) : zero;
        for (int64_t i = 0; i < whole; i += W) s += batch::load_unaligned(xr + i);
        m[r] = all_lanes_reduce<Arch, T, true>(s) * inv_n;
    }
    for (int r = 0; r < R; ++r) {
        const T* xr = x + r * n;
        batch s = zero;
        if (ragged) {
            const batch d = xsimd::select(tail, batch::load_unaligned(xr + n - W) - m[r], zero);
            s = d * d;
        }
        for (int64_t i = 0; i < whole; i += W) {
            const batch d = batch::load_unaligned(xr + i) - m[r];
            s = xsimd::fma(d, d, s);
        }
        q[r] = batch(T(1)) / xsimd::sqrt(xsimd::fma(all_lanes_reduce<Arch, T, true>(s), inv_n,
                                                    batch(eps)));
    }
    for (int r = 0; r < R; ++r) {
        const T* xr = x + r * n;
        T* yr = out + r * n;
        // the overlapping last vector computed before the whole vectors are written and stored
        // after them (its shared lanes get the values they already hold), so out may be x
        batch y_last(T(0));
        if (ragged)
            y_last = xsimd::fma((batch::load_unaligned(xr + n - W) - m[r]) * q[r],
                                batch::load_unaligned(weight + n - W),
                                batch::load_unaligned(bias + n - W));
        for (int64_t i = 0; i < whole; i += W)
            xsimd::fma((batch::load_unaligned(xr + i) - m[r]) * q[r],
                       batch::load_unaligned(weight + i), batch::load_unaligned(bias + i))
                .store_unaligned(yr + i);
        if (ragged) y_last.store_unaligned(yr + n - W);
        alignas(64) T lanes[W];
        m[r].store_aligned(lanes);
        mean[r] = lanes[0];
        q[r].store_aligned(lanes);
        rstd[r] = lanes[0];
    }
}

// Rows of n in groups of four, then one at a time; rows shorter than a vector go to the scalar
// reference.
template <class Arch, typename T>
void layernorm_rows(T* out, const T* x, const T* weight, const T* bias, int64_t rows, int64_t n,
                    T eps, T* mean, T* rstd) {
    constexpr int64_t W = xsimd::batch<T, Arch>::size;
    if (n < W) {
        reference::layernorm_rows(out, x, weight, bias, rows, n, eps, mean, rstd);
        return;
    }
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4)
        layernorm_row_group<Arch, T, 4>(out + r * n, x + r * n, weight, bias, n, eps, mean + r,
                                        rstd + r);
    for (; r < rows; ++r)
        layernorm_row_group<Arch, T, 1>(out + r * n, x + r * n, weight, bias, n, eps, mean + r,
                                        rstd + r);
}

template <class Arch, typename T>
void layernorm_row_backward(T* dx, const T* dy, const T* x, const T* weight, T mean, T rstd,
                            int64_t n) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const int64_t whole = n / W * W;
    const batch vm(mean), vr(rstd);
    batch a(T(0)), b(T(0));
    for (int64_t i = 0; i < whole; i += W) {
        const batch xhat = (batch::load_unaligned(x + i) - vm) * vr;
        const batch dxhat = batch::load_unaligned(dy + i) * batch::load_unaligned(weight + i);
        a += dxhat;
        b = xsimd::fma(dxhat, xhat, b);
    }
    T sa = xsimd::hadd(a), sb = xsimd::hadd(b);
    for (int64_t c = whole; c < n; ++c) {
        const T xhat = (x[c] - mean) * rstd;
        const T dxhat = dy[c] * weight[c];
        sa += dxhat;
        sb += dxhat * xhat;
    }
    const batch ma(sa / T(n)), mb(sb / T(n));
    for (int64_t i = 0; i < whole; i += W) {
        const batch xhat = (batch::load_unaligned(x + i) - vm) * vr;
        const batch dxhat = batch::load_unaligned(dy + i) * batch::load_unaligned(weight + i);
        const batch g = vr * (dxhat - ma - xhat * mb);
        (batch::load_unaligned(dx + i) + g).store_unaligned(dx + i);
    }
    for (int64_t c = whole; c < n; ++c) {
        const T xhat = (x[c] - mean) * rstd;
        const T dxhat = dy[c] * weight[c];
        dx[c] += rstd * (dxhat - sa / T(n) - xhat * (sb / T(n)));
    }
}

// One stage of a W x W in-register transpose: in every 2D x 2D block of the tile, the two
// off-diagonal D x D blocks trade places (row i, lane l) <-> (row i + D, lane l - D), for the
// lanes l with bit D set: lane rotations move them, a blend keeps the rest. After the stages for
// D = W/2, ..., 1 every element (i, l) has had the bits where i and l differ swapped: it is at
// (l, i).
template <class Arch, typename T, std::size_t D>
void transpose_tile_stages(xsimd::batch<T, Arch>* rows) {
    using batch = xsimd::batch<T, Arch>;
    constexpr std::size_t W = batch::size;
    if constexpr (D > 0) {
        alignas(64) T low[W];   // lanes with bit D clear
        for (std::size_t l = 0; l < W; ++l) low[l] = (l & D) ? T(0) : T(1);
        const auto keep_low = batch::load_aligned(low) != batch(T(0));
        for (std::size_t i = 0; i < W; ++i) {
            if (i & D) continue;
            const batch a = rows[i], b = rows[i + D];
            const auto b_down = xsimd::swizzle(
                b, xsimd::make_batch_constant<lane_index_batch<Arch, T>, RotateLanes<W - D>>());
            const auto a_up = xsimd::swizzle(
                a, xsimd::make_batch_constant<lane_index_batch<Arch, T>, RotateLanes<D>>());
            rows[i] = xsimd::select(keep_low, a, b_down);
            rows[i + D] = xsimd::select(keep_low, a_up, b);
        }
        transpose_tile_stages<Arch, T, D / 2>(rows);
    }
}

// W x W tiles, loaded as W row vectors, transposed in registers (log2 W stages of rotations
// and blends) and stored as W row vectors of dst. Ragged edges are overlapping last tiles,
// which rewrite what the tiles before them wrote; fewer than W rows or columns go scalar. A
// gather per column of a 16-row block was tried first: at 14 cycles a gather it was no faster
// than the scalar loop inside the GEMM's packing of a transposed B.
template <class Arch, typename T>
void transpose(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    if (rows < W || cols < W) {
        reference::transpose(dst, ld_dst, src, ld_src, rows, cols);
        return;
    }
    batch tile[W];
    for (int64_t i0 = 0; i0 < rows; i0 += W) {
        const int64_t r0 = std::min(i0, rows - W);
        for (int64_t j0 = 0; j0 < cols; j0 += W) {
            const int64_t c0 = std::min(j0, cols - W);
            // one pointer stepped a row at a time: with W row addresses of their own the
            // compiler ran out of registers and spent the tile's time moving them around
            const T* in = src + r0 * ld_src + c0;
            for (int64_t i = 0; i < W; ++i, in += ld_src) tile[i] = batch::load_unaligned(in);
            transpose_tile_stages<Arch, T, std::size_t(W / 2)>(tile);
            T* out = dst + c0 * ld_dst + r0;
            for (int64_t i = 0; i < W; ++i, out += ld_dst) tile[i].store_unaligned(out);
        }
    }
}

// add_rows over V vectors of columns starting at x, y and sums: the column sums stay in
// registers over all the rows (one load and one store of sums), which is what makes it cheaper
// than an axpy per row. Adds in the same order as the scalar loop, so the same bits.
template <class Arch, typename T, int V, bool kY, bool kSums>
void add_rows_columns(T* y, int64_t ldy, const T* x, int64_t ldx, int64_t rows, T* sums) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    batch acc[V];
    if constexpr (kSums)
        for (int v = 0; v < V; ++v) acc[v] = batch::load_unaligned(sums + v * W);
    for (int64_t i = 0; i < rows; ++i) {
        const T* xr = x + i * ldx;
        for (int v = 0; v < V; ++v) {
            const batch xv = batch::load_unaligned(xr + v * W);
            if constexpr (kY) {
                T* yr = y + i * ldy + v * W;
                (batch::load_unaligned(yr) + xv).store_unaligned(yr);
            }
            if constexpr (kSums) acc[v] += xv;
        }
    }
    if constexpr (kSums)
        for (int v = 0; v < V; ++v) acc[v].store_unaligned(sums + v * W);
}

template <class Arch, typename T, bool kY, bool kSums>
void add_rows_of(T* y, int64_t ldy, const T* x, int64_t ldx, int64_t rows, int64_t cols, T* sums) {
    constexpr int64_t W = xsimd::batch<T, Arch>::size;
    int64_t j = 0;
    // no offset of the pointer a variant leaves null (undefined behaviour, even unread)
    for (; j + 4 * W <= cols; j += 4 * W)
        add_rows_columns<Arch, T, 4, kY, kSums>(kY ? y + j : nullptr, ldy, x + j, ldx, rows,
                                                kSums ? sums + j : nullptr);
    for (; j + W <= cols; j += W)
        add_rows_columns<Arch, T, 1, kY, kSums>(kY ? y + j : nullptr, ldy, x + j, ldx, rows,
                                                kSums ? sums + j : nullptr);
    if (j < cols)
        reference::add_rows(kY ? y + j : nullptr, ldy, x + j, ldx, rows, cols - j,
                            kSums ? sums + j : nullptr);
}

template <class Arch, typename T>
void add_rows(T* y, int64_t ldy, const T* x, int64_t ldx, int64_t rows, int64_t cols, T* sums) {
    if (y && sums) add_rows_of<Arch, T, true, true>(y, ldy, x, ldx, rows, cols, sums);
    else if (y) add_rows_of<Arch, T, true, false>(y, ldy, x, ldx, rows, cols, sums);
    else if (sums) add_rows_of<Arch, T, false, true>(y, ldy, x, ldx, rows, cols, sums);
}

template <class Arch, typename T>
void add_bias_rows(T* out, int64_t ld_out, const T* x, int64_t ldx, const T* bias, int64_t rows,
                   int64_t cols) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int64_t W = batch::size;
    const int64_t whole = cols / W * W;
    for (int64_t i = 0; i < rows; ++i) {
        const T* xr = x + i * ldx;
        T* o = out + i * ld_out;
        for (int64_t j = 0; j < whole; j += W)
            (batch::load_unaligned(xr + j) + batch::load_unaligned(bias + j)).store_unaligned(o + j);
        for (int64_t j = whole; j < cols; ++j) o[j] = xr[j] + bias[j];
    }
}

template <class Arch, typename T>
VectorKernels<T> make_vector_kernels() {
    return VectorKernels<T>{&dot<Arch, T>,   &axpy<Arch, T>,  &max<Arch, T>,
                            &exp_shift_sum<Arch, T>, &scale<Arch, T>, &adamw<Arch, T>,
                            &gelu<Arch, T>,  &gelu_backward<Arch, T>, &small_gemm<Arch, T>,
                            &softmax_rows<Arch, T>, &layernorm_rows<Arch, T>,
                            &layernorm_row_backward<Arch, T>, &relu_backward<Arch, T>,
                            &transpose<Arch, T>, &add_rows<Arch, T>, &add_bias_rows<Arch, T>};
}

}  // namespace rmt::kernels::simd
