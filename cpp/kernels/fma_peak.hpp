// The machine's FMA peak, measured rather than assumed (shared/BENCHMARKING.md): a loop of
// independent fused multiply-adds that never touches memory. Enough independent accumulators
// cover the FMA latency (4 cycles) on both FMA ports (2 per cycle): at least 8; we use NACC.
// Instantiated per ISA in isa_<arch>.cpp like the other kernels.
#pragma once
#include <cstdint>
#include <xsimd/xsimd.hpp>

namespace rmt::kernels {
namespace {  // internal linkage, see vector_reference.hpp

// Keeps the accumulators alive so the loop cannot be optimised away.
volatile float fma_peak_sink = 0;

}  // namespace

namespace reference {
namespace {
// Scalar twin: NACC independent scalar chains (the compiler may vectorise them; the scalar
// ISA's "peak" is whatever the baseline build can reach).
template <int NACC>
double fma_peak_f32(int64_t iterations) {
    float acc[NACC];
    for (int i = 0; i < NACC; ++i) acc[i] = float(i) * 1e-3f;
    const float a = 0.999999f, b = 1e-7f;
    for (int64_t it = 0; it < iterations; ++it)
        for (int i = 0; i < NACC; ++i) acc[i] = acc[i] * a + b;
    float s = 0;
    for (int i = 0; i < NACC; ++i) s += acc[i];
    fma_peak_sink = s;
    return 2.0 * double(NACC) * double(iterations);
}
}  // namespace
}  // namespace reference

namespace simd {
namespace {
// Runs `iterations` rounds of NACC independent vector FMAs; returns the flops done
// (2 per lane per FMA).
template <class Arch, int NACC>
double fma_peak_f32(int64_t iterations) {
    using batch = xsimd::batch<float, Arch>;
    batch acc[NACC];
    for (int i = 0; i < NACC; ++i) acc[i] = batch(float(i) * 1e-3f);
    const batch a(0.999999f), b(1e-7f);
    for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
        for (int i = 0; i < NACC; ++i) acc[i] = xsimd::fma(acc[i], a, b);
    }
    batch s(0.f);
    for (int i = 0; i < NACC; ++i) s += acc[i];
    fma_peak_sink = xsimd::hadd(s);
    return 2.0 * double(NACC) * double(batch::size) * double(iterations);
}
}  // namespace
}  // namespace simd

}  // namespace rmt::kernels
