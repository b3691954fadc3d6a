// The FMA-peak measurement: the active ISA's register-only loop (fma_peak.hpp) on every thread.
#include <algorithm>
#include <chrono>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"

namespace rmt::kernels {

// Measured float32 FMA peak of `threads` threads running the active ISA's register-only FMA loop
// at once, in GFLOP/s. Calibrates the iteration count on one thread, warms up (clock ramp, the
// AVX-512 frequency licence), then times `repeats` parallel runs of about seconds / repeats each
// and returns the best: noise only ever lowers a peak.
double fma_peak_gflops(int threads, double seconds) {
    using clock = std::chrono::steady_clock;
    auto run = active().fma_peak_f32;
    auto elapsed = [](clock::time_point t0) {
        return std::chrono::duration<double>(clock::now() - t0).count();
    };
    int64_t iters = 1 << 14;
    for (;;) {   // calibrate: grow until one run takes at least 5 ms
        auto t0 = clock::now();
        run(iters);
        const double t = elapsed(t0);
        if (t > 5e-3) {
            iters = std::max<int64_t>(1, int64_t(double(iters) * (seconds / 6) / t));
            break;
        }
        iters *= 4;
    }
    const int repeats = 5;
    double best = 0;
    for (int r = 0; r <= repeats; ++r) {   // r == 0 is the warm-up
        double flops = 0;
        auto t0 = clock::now();
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : flops)
#endif
        flops += run(iters);
        const double gflops = flops / elapsed(t0) * 1e-9;
        if (r > 0) best = std::max(best, gflops);
    }
    return best;
}


}  // namespace rmt::kernels
