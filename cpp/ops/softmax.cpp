#include "ops/softmax.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"
#include "ops/softmax_rows.hpp"

namespace rmt::ops {

namespace {

// Where one mask row's allowed keys lie: all in [lo, hi) (lo == hi: none), and whether some key
// inside that range is masked. Without a mask: all N keys.
struct AllowedRange {
    int64_t lo, hi;
    bool holes;
    bool operator==(const AllowedRange& o) const { return lo == o.lo && hi == o.hi && holes == o.holes; }
};

AllowedRange allowed_range(const uint8_t* a, int64_t N) {
    if (!a) return {0, N, false};
    int64_t lo = 0, hi = N;
    while (lo < N && !a[lo]) ++lo;
    while (hi > lo && !a[hi - 1]) --hi;
    // memchr: glibc's vector scan, where a byte loop cost 2% of an encoder stream
    return {lo, hi, lo < hi && std::memchr(a + lo, 0, size_t(hi - lo)) != nullptr};
}

}  // namespace

std::vector<MaskRowRun> mask_row_runs(const uint8_t* allowed, int64_t R, int64_t N,
                                      int64_t mask_rows) {
    std::vector<MaskRowRun> runs;
    if (R <= 0) return runs;
    auto mask_row = [&](int64_t r) { return allowed ? allowed + (r % mask_rows) * N : nullptr; };
    int64_t r = 0;
    AllowedRange range = allowed_range(mask_row(0), N);
    while (r < R) {
        // the rows after r with the same range (a padding mask: all of them) go with it
        // (rows with holes go one at a time)
        int64_t end = r + 1;
        AllowedRange next{};
        if (!range.holes)
            for (; end < R; ++end) {
                next = mask_row(end) == mask_row(r) ? range : allowed_range(mask_row(end), N);
                if (!(next == range)) break;
            }
        runs.push_back({r, end, range.lo, range.hi, range.holes});
        if (end < R) range = range.holes ? allowed_range(mask_row(end), N) : next;
        r = end;
    }
    return runs;
}

template <typename T>
void softmax_row_runs(T* probs, const T* scores, int64_t scores_stride, const uint8_t* allowed,
                      const std::vector<MaskRowRun>& runs, int64_t N, int64_t mask_rows) {
    const auto& vk = kernels::vec<T>();
    for (const MaskRowRun& run : runs) {
        const int64_t r = run.begin, end = run.end, lo = run.lo, hi = run.hi;
        for (int64_t i = r; i < end; ++i) {
            T* p = probs + i * N;
            std::fill(p, p + lo, T(0));   // nothing allowed (lo == hi): zeros, not NaN
            std::fill(p + hi, p + N, T(0));
        }
        if (lo < hi && !run.holes) {
            // one allowed range without holes (no mask, causal, padding): one kernel call for
            // the run of rows
            vk.softmax_rows(probs + r * N + lo, N, scores + r * scores_stride + lo, scores_stride,
                            end - r, hi - lo);
        } else if (lo < hi) {
            // Masked keys inside [lo, hi) are set to -inf, whose exp is exactly 0 (scalar and
            // xsimd), so the vector exp and sum run over the whole range. (A run with holes is
            // one row.)
            const uint8_t* a = allowed + (r % mask_rows) * N;
            const T* s = scores + r * scores_stride;
            T* p = probs + r * N;
            T mx = s[lo];
            for (int64_t j = lo; j < hi; ++j)
                if (a[j]) mx = std::max(mx, s[j]);
            for (int64_t j = lo; j < hi; ++j)
                p[j] = a[j] ? s[j] : -std::numeric_limits<T>::infinity();
            const T sum = vk.exp_shift_sum(p + lo, mx, hi - lo);
            vk.scale(p + lo, T(1) / sum, hi - lo);
        }
    }
}

template <typename T>
void masked_softmax_rows(T* probs, const T* scores, int64_t scores_stride, const uint8_t* allowed,
                         int64_t R, int64_t N, int64_t mask_rows) {
    softmax_row_runs<T>(probs, scores, scores_stride, allowed,
                        mask_row_runs(allowed, R, N, mask_rows), N, mask_rows);
}

template <typename T>
void softmax_rows_backward(T* dscores, const T* dprobs, const T* probs, int64_t R, int64_t N,
                           T scale, bool overwrite) {
    const auto& vk = kernels::vec<T>();
    for (int64_t r = 0; r < R; ++r) {
        const T* dp = dprobs + r * N;
        const T* p = probs + r * N;
        T* ds = dscores + r * N;
        // probs = softmax(scores): dscores = probs * (dprobs - <dprobs, probs>)
        const T inner = vk.dot(dp, p, N);
        if (overwrite)
            for (int64_t j = 0; j < N; ++j) ds[j] = scale * p[j] * (dp[j] - inner);
        else
            for (int64_t j = 0; j < N; ++j) ds[j] += scale * p[j] * (dp[j] - inner);
    }
}

template <typename T>
void masked_softmax_forward(T* probs, const T* scores, const uint8_t* allowed, int64_t R, int64_t N,
                            int64_t mask_rows) {
    if (mask_rows < 1) mask_rows = 1;
    const bool parallel = !kernels::in_parallel_region() && R > 1 && R * N >= (int64_t(1) << 14);
    (void)parallel;
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
#endif
    for (int64_t r = 0; r < R; ++r)
        masked_softmax_rows<T>(probs + r * N, scores + r * N, N,
                               allowed ? allowed + (r % mask_rows) * N : nullptr, 1, N, 1);
}

template <typename T>
void masked_softmax_backward(T* dscores, const T* dprobs, const T* probs, int64_t R, int64_t N) {
    const bool parallel = !kernels::in_parallel_region() && R > 1 && R * N >= (int64_t(1) << 14);
    (void)parallel;
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
#endif
    for (int64_t r = 0; r < R; ++r)
        softmax_rows_backward<T>(dscores + r * N, dprobs + r * N, probs + r * N, 1, N, T(1), false);
}

template void masked_softmax_rows<float>(float*, const float*, int64_t, const uint8_t*, int64_t, int64_t, int64_t);
template void masked_softmax_rows<double>(double*, const double*, int64_t, const uint8_t*, int64_t, int64_t, int64_t);
template void softmax_row_runs<float>(float*, const float*, int64_t, const uint8_t*,
                                      const std::vector<MaskRowRun>&, int64_t, int64_t);
template void softmax_row_runs<double>(double*, const double*, int64_t, const uint8_t*,
                                       const std::vector<MaskRowRun>&, int64_t, int64_t);
template void softmax_rows_backward<float>(float*, const float*, const float*, int64_t, int64_t, float, bool);
template void softmax_rows_backward<double>(double*, const double*, const double*, int64_t, int64_t, double, bool);
template void masked_softmax_forward<float>(float*, const float*, const uint8_t*, int64_t, int64_t, int64_t);
template void masked_softmax_forward<double>(double*, const double*, const uint8_t*, int64_t, int64_t, int64_t);
template void masked_softmax_backward<float>(float*, const float*, const float*, int64_t, int64_t);
template void masked_softmax_backward<double>(double*, const double*, const double*, int64_t, int64_t);

}  // namespace rmt::ops
