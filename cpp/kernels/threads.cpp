#include "kernels/threads.hpp"

#include <atomic>
#include <stdexcept>
#include <string>

namespace rmt::kernels {
namespace {

std::atomic<int> thread_count{0};   // 0: not set yet
thread_local int serial_depth = 0;

}  // namespace

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
    thread_count.store(n);
}

int get_num_threads() {
    if (serial_depth > 0) return 1;
    int n = thread_count.load();
    if (n == 0) {
#ifdef RMT_HAVE_OPENMP
        int expected = 0;
        thread_count.compare_exchange_strong(expected, omp_get_max_threads());
        n = thread_count.load();
#else
        n = 1;
#endif
    }
    return n;
}

SerialScope::SerialScope(bool active) : active_(active) {
    if (active_) ++serial_depth;
}

SerialScope::~SerialScope() {
    if (active_) --serial_depth;
}

}  // namespace rmt::kernels
