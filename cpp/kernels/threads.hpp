// Thread control. OpenMP when the build has it; otherwise everything runs on one thread.
#pragma once
#include <cstdint>

#ifdef RMT_HAVE_OPENMP
#include <omp.h>
#endif

namespace rmt::kernels {

void set_num_threads(int n);   // n >= 1
int get_num_threads();

inline bool in_parallel_region() {
#ifdef RMT_HAVE_OPENMP
    return omp_in_parallel();
#else
    return false;
#endif
}

// Whether an op should fork threads for `work` elements: only from min_work on (waking a team
// costs microseconds, more than tens of thousands of elements take on one core), never from
// inside a parallel region (the caller's loop is split already), and only with threads to use.
inline bool worth_threads(int64_t work, int64_t min_work = int64_t(1) << 15) {
    return work >= min_work && !in_parallel_region() && get_num_threads() > 1;
}

}  // namespace rmt::kernels
