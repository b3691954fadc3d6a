#include "kernels/threads.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace rmt::kernels {
namespace {

std::atomic<int> thread_count{0};   // 0: not set yet
thread_local int serial_depth = 0;

#ifdef RMT_HAVE_OPENMP
// OMP_NUM_THREADS (its first number), else the processors this process may run on. Not
// omp_get_max_threads(): that is the calling thread's setting of the shared runtime, which a
// torch.set_num_threads before rmt's first use would already have changed.
int default_thread_count() {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
        const long n = std::strtol(env, nullptr, 10);
        if (n >= 1 && n <= 4096) return int(n);
    }
    return std::max(1, omp_get_num_procs());
}
#endif

}  // namespace

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
    thread_count.store(n);
}

int get_num_threads() {
#ifndef RMT_HAVE_OPENMP
    return 1;   // whatever was set: a build without OpenMP runs everything on one thread
#else
    if (serial_depth > 0) return 1;
    int n = thread_count.load();
    if (n == 0) {
        int expected = 0;
        thread_count.compare_exchange_strong(expected, default_thread_count());
        n = thread_count.load();
    }
    return n;
#endif
}

SerialScope::SerialScope(bool active) : active_(active) {
    if (active_) ++serial_depth;
}

SerialScope::~SerialScope() {
    if (active_) --serial_depth;
}

}  // namespace rmt::kernels
