// GEMM micro-kernels: an MR x NR register tile, written once against xsimd and instantiated
// per ISA in isa_<arch>.cpp. The scalar micro-kernel is the reference for all of them.
#pragma once
#include <cstdint>
#include <xsimd/xsimd.hpp>

#include "kernels/isa.hpp"

namespace rmt::kernels {

namespace reference {
namespace {  // internal linkage, see vector_reference.hpp
// One MR x NR tile: A(r, p) = a[r * a_rs + p * a_cs], B from a packed panel (see
// GemmMicroKernel in isa.hpp).
template <typename T, int MR, int NR>
void gemm_micro(int64_t kc, const T* a, int64_t a_rs, int64_t a_cs, const T* b_panel, T* c,
                int64_t ldc, T alpha, T beta, int m, int n, const T* bias, bool relu) {
    T acc[MR][NR] = {};
    for (int64_t p = 0; p < kc; ++p)
        for (int r = 0; r < MR; ++r)
            for (int q = 0; q < NR; ++q) acc[r][q] += a[r * a_rs + p * a_cs] * b_panel[p * NR + q];
    for (int r = 0; r < m; ++r)
        for (int q = 0; q < n; ++q) {
            T& out = c[r * ldc + q];
            out = (beta == T(0) ? alpha * acc[r][q] : alpha * acc[r][q] + beta * out) +
                  (bias ? bias[q] : T(0));
            if (relu) out = out > T(0) ? out : T(0);
        }
}
}  // namespace
}  // namespace reference

namespace simd {
// MR rows x NV vectors of the B panel held in registers. A's elements are only broadcast, so A
// may be a packed panel or MR rows of a row-major matrix read in place.
template <class Arch, typename T, int MR, int NV>
void gemm_micro(int64_t kc, const T* a, int64_t a_rs, int64_t a_cs, const T* b_panel, T* c,
                int64_t ldc, T alpha, T beta, int m, int n, const T* bias, bool relu) {
    using batch = xsimd::batch<T, Arch>;
    constexpr int W = int(batch::size);
    constexpr int NR = NV * W;
    // Ask for the C tile's lines now, with intent to write: the k loop below hides their
    // latency, where a tile of a large C (far out of L2) would otherwise stall at the store.
    constexpr int kLineElems = 64 / int(sizeof(T));
    // Only the m x n elements the tile stores: on a right-edge tile, lines past n may be
    // another thread's tile, or past the end of C.
    for (int r = 0; r < m; ++r) {
        for (int q = 0; q < n; q += kLineElems) __builtin_prefetch(c + r * ldc + q, 1, 3);
        __builtin_prefetch(c + r * ldc + n - 1, 1, 3);   // an unaligned row's last line
    }
    batch acc[MR][NV];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = batch(T(0));
    for (int64_t p = 0; p < kc; ++p) {
        batch b[NV];
        for (int v = 0; v < NV; ++v) b[v] = batch::load_aligned(b_panel + p * NR + v * W);
        const T* a_p = a + p * a_cs;
        for (int r = 0; r < MR; ++r) {
            const batch a_rp(a_p[r * a_rs]);
            for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a_rp, b[v], acc[r][v]);
        }
    }
    const batch valpha(alpha), vbeta(beta);
    if (m == MR && n == NR) {
        batch vbias[NV];
        for (int v = 0; v < NV; ++v) vbias[v] = bias ? batch::load_unaligned(bias + v * W) : batch(T(0));
        for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) {
                T* out = c + r * ldc + v * W;
                batch res = xsimd::fma(acc[r][v], valpha, vbias[v]);
                if (beta != T(0)) res = xsimd::fma(vbeta, batch::load_unaligned(out), res);
                if (relu) res = xsimd::select(res > batch(T(0)), res, batch(T(0)));   // NaN -> 0
                res.store_unaligned(out);
            }
        return;
    }
    alignas(64) T tile[MR * NR];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v].store_aligned(tile + r * NR + v * W);
    for (int r = 0; r < m; ++r)
        for (int q = 0; q < n; ++q) {
            T& out = c[r * ldc + q];
            out = (beta == T(0) ? alpha * tile[r * NR + q] : alpha * tile[r * NR + q] + beta * out) +
                  (bias ? bias[q] : T(0));
            if (relu) out = out > T(0) ? out : T(0);
        }
}

template <class Arch, typename T, int MR, int NV>
GemmMicroKernel<T> make_gemm_micro(int64_t kc = 256, int64_t mc = 144) {
    static_assert(MR > 0 && NV > 0, "empty register tile");
    return GemmMicroKernel<T>{MR, NV * int(xsimd::batch<T, Arch>::size), &gemm_micro<Arch, T, MR, NV>,
                              kc, mc};
}
}  // namespace simd

}  // namespace rmt::kernels
