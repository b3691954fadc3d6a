// Column sums over the rows of an operand that do not depend on the thread count. Internal to
// cpp/ops (the parameter gradients of layernorm and linear).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/threads.hpp"

namespace rmt::ops {

// Rows are cut into parts of kRowsPerPart. add_row(n, slot) adds row n's contributions into its
// part's slot of `width` values; threads take whole parts (parallel), and the slots are then
// added into total in part order. Each row is visited once, while the caller may do the rest of
// its work on it (layernorm computes dx in the same call).
template <typename T, typename AddRow>
void sum_row_parts(T* total, int64_t width, int64_t N, bool parallel, AddRow add_row) {
    constexpr int64_t kRowsPerPart = 64;
    const int64_t parts = (N + kRowsPerPart - 1) / kRowsPerPart;
    std::vector<T> slots(size_t(parts * width));
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
    for (int64_t part = 0; part < parts; ++part) {
        T* slot = slots.data() + part * width;
        std::fill(slot, slot + width, T(0));
        for (int64_t n = part * kRowsPerPart; n < std::min(N, (part + 1) * kRowsPerPart); ++n)
            add_row(n, slot);
    }
    for (int64_t part = 0; part < parts; ++part)
        for (int64_t c = 0; c < width; ++c) total[c] += slots[size_t(part * width + c)];
}

}  // namespace rmt::ops
