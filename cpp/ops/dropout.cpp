#include "ops/dropout.hpp"

#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

// Elementwise and cheap: threads pay off from 64 K elements.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

// splitmix64's finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// The seed is mixed on its own first, so nearby seeds (0, 1, 2, ...) give unrelated keys and
// two (seed, counter) pairs collide only by chance.
inline uint64_t stream_key(uint64_t seed) { return mix64(seed + kGolden); }

// uniform in [0, 1) from the top 53 bits of hash(key, counter).
inline double uniform(uint64_t key, uint64_t counter) {
    return double(mix64(key ^ (counter * kGolden)) >> 11) * 0x1.0p-53;
}

}  // namespace

template <typename T>
void dropout_forward(T* out, uint8_t* keep, const T* inp, int64_t n, T p, uint64_t seed,
                     uint64_t offset) {
    const uint64_t key = stream_key(seed);
    const double threshold = double(p);
    const T scale = T(1) / (T(1) - p);
    const bool parallel = kernels::worth_threads(n, kMinParallelWork);
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
    for (int64_t i = 0; i < n; ++i) {
        const bool k = uniform(key, offset + uint64_t(i)) >= threshold;
        keep[i] = uint8_t(k);
        out[i] = k ? inp[i] * scale : T(0);   // out may alias inp
    }
}

template <typename T>
void dropout_backward(T* dinp, const T* dout, const uint8_t* keep, int64_t n, T p) {
    const T scale = T(1) / (T(1) - p);
    for (int64_t i = 0; i < n; ++i) dinp[i] += keep[i] ? dout[i] * scale : T(0);
}

template void dropout_forward<float>(float*, uint8_t*, const float*, int64_t, float, uint64_t, uint64_t);
template void dropout_forward<double>(double*, uint8_t*, const double*, int64_t, double, uint64_t, uint64_t);
template void dropout_backward<float>(float*, const float*, const uint8_t*, int64_t, float);
template void dropout_backward<double>(double*, const double*, const uint8_t*, int64_t, double);

}  // namespace rmt::ops
