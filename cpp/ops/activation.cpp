#include "ops/activation.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/isa.hpp"

#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

// Elementwise and cheap: threads pay off from 64 K elements.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

// Elements per vector-kernel call: a multiple of every vector width, and small enough that the
// threads share the work evenly.
constexpr int64_t kChunk = 4096;

// f(lo, len) over [0, n) in chunks of kChunk elements, split between the threads when large.
template <typename F>
void for_each_chunk(int64_t n, F f) {
    const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (kernels::worth_threads(n, kMinParallelWork)) \
    num_threads(kernels::get_num_threads())
    for (int64_t c = 0; c < chunks; ++c) f(c * kChunk, std::min(kChunk, n - c * kChunk));
}

}  // namespace

template <typename T>
void relu_forward(T* out, const T* inp, int64_t n) {
    // Memory-bound (the LM model's fc1 output is 10 MB): split between the threads as well.
    for_each_chunk(n, [=](int64_t lo, int64_t len) {
        for (int64_t i = lo; i < lo + len; ++i) out[i] = inp[i] > T(0) ? inp[i] : T(0);
    });
}

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
    const auto& vec = kernels::vec<T>();
    for_each_chunk(n, [&](int64_t lo, int64_t len) { vec.axpy(T(1), x + lo, y + lo, len); });
}

template <typename T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool overwrite) {
    const auto& vec = kernels::vec<T>();
    for_each_chunk(n, [&](int64_t lo, int64_t len) {
        if (overwrite) std::fill(dinp + lo, dinp + lo + len, T(0));
        vec.relu_backward(dinp + lo, dout + lo, inp + lo, len);
    });
}

// GELU goes through the vector kernels (xsimd erf / tanh / exp) in chunks, threaded when large.
template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n, bool tanh_approximation) {
    const auto& vec = kernels::vec<T>();
    for_each_chunk(n, [&](int64_t lo, int64_t len) {
        vec.gelu(out + lo, inp + lo, len, tanh_approximation);
    });
}

template <typename T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation,
                   bool overwrite) {
    const auto& vec = kernels::vec<T>();
    for_each_chunk(n, [&](int64_t lo, int64_t len) {
        if (overwrite) std::fill(dinp + lo, dinp + lo + len, T(0));
        vec.gelu_backward(dinp + lo, dout + lo, inp + lo, len, tanh_approximation);
    });
}

template void relu_forward<float>(float*, const float*, int64_t);
template void relu_forward<double>(double*, const double*, int64_t);
template void relu_backward<float>(float*, const float*, const float*, int64_t, bool);
template void relu_backward<double>(double*, const double*, const double*, int64_t, bool);
template void gelu_forward<float>(float*, const float*, int64_t, bool);
template void gelu_forward<double>(double*, const double*, int64_t, bool);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, bool, bool);
template void gelu_backward<double>(double*, const double*, const double*, int64_t, bool, bool);
template void add_inplace<float>(float*, const float*, int64_t);
template void add_inplace<double>(double*, const double*, int64_t);

}  // namespace rmt::ops
