// Cache-line aligned storage for the activations, gradients and parameters of the models.
//
// std::vector's allocator hands out 16-byte aligned blocks (large ones land 16 bytes into an
// mmap'd page), so a row of C floats, or a head slice of one, starts mid cache line. Two threads
// writing the two sides of a split (the GEMM's column halves, neighbouring heads) then share the
// line where they meet (aligned, they share none when the split falls on a multiple of 16
// floats), and the GEMM's 64-byte vector loads of unaligned rows straddle two lines: the models'
// dW products ran 8-15% slower at 2 threads on unaligned operands.
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace rmt {

template <typename T>
struct CacheLineAllocator {
    using value_type = T;
    static constexpr std::size_t kAlignment = 64;

    CacheLineAllocator() noexcept = default;
    template <typename U>
    CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}

    T* allocate(std::size_t n) {
        if (n > std::size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
        return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlignment)));
    }
    void deallocate(T* p, std::size_t) noexcept {
        ::operator delete(p, std::align_val_t(kAlignment));
    }
    template <typename U>
    bool operator==(const CacheLineAllocator<U>&) const noexcept { return true; }
    template <typename U>
    bool operator!=(const CacheLineAllocator<U>&) const noexcept { return false; }
};

// The models' float buffers.
using Buffer = std::vector<float, CacheLineAllocator<float>>;

}  // namespace rmt
