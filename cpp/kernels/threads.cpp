#include "kernels/threads.hpp"

#include <stdexcept>
#include <string>

namespace rmt::kernels {

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
#ifdef RMT_HAVE_OPENMP
    omp_set_num_threads(n);
#endif
}

int get_num_threads() {
#ifdef RMT_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace rmt::kernels
