// Thread control. OpenMP when the build has it; otherwise everything runs on one thread.
#pragma once
#include <cstdint>

#ifdef RMT_HAVE_OPENMP
#include <omp.h>
#endif

namespace rmt::kernels {

// Our thread count: what every parallel region of ours passes as num_threads. It is ours, not
// OpenMP's nthreads-var: a process that also imports PyTorch runs both on one libgomp (the first
// libgomp.so.1 loaded serves every later library asking for that name), and there
// torch.set_num_threads(1) set our count to 1 too, and rmt.set_num_threads torch's. Until
// set_num_threads, the count is OMP_NUM_THREADS, else the processors the process may use; 1 in a
// build without OpenMP, whatever is set.
void set_num_threads(int n);   // n >= 1
// 1 inside a SerialScope of this thread, else our thread count.
int get_num_threads();

// Keeps the calling thread's parallel regions (and so its GEMMs) on that thread for its scope,
// when `active`: for problems too small to pay for waking a team. Nests; other threads are not
// affected.
class SerialScope {
public:
    explicit SerialScope(bool active);
    ~SerialScope();
    SerialScope(const SerialScope&) = delete;
    SerialScope& operator=(const SerialScope&) = delete;

private:
    bool active_;
};

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
