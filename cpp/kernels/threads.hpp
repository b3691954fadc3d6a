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

}  // namespace rmt::kernels
