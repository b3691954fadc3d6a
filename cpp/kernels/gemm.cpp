// BLIS-style GEMM: the K dimension is cut into KC slices, the rows of op(A) into MC blocks, the
// columns of op(B) into NC blocks; each slice of op(B) is packed once into NR-wide panels, so the
// micro-kernel streams B from cache with unit stride whatever its orientation. The micro-kernel
// only broadcasts A's elements: an untransposed A is read in place (MR rows at a time), a
// transposed one too against few panels (its MR values of one k are contiguous), otherwise
// packed per block into MR-tall panels. Threads split the B panels of a slice
// (or, for a tall transposed A, its rows: see split_rows). The first KC slice applies beta and
// adds the bias; later slices accumulate (beta = 1); the last one applies the ReLU when asked
// (the finished sums only).
#include "kernels/gemm.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"

namespace rmt::kernels {
namespace {

// KC (the K slice) and MC (rows of op(A) per packed block) come with the micro-kernel of each ISA
// (GemmMicroKernel::kc, ::mc); NC, the columns of op(B) per packed slice, is the same for all.
constexpr int64_t NC = 3072;

// The most B panels (per thread) against which an untransposed A block is read in place rather
// than packed (measured on AVX2: in place wins at N <= 256, packing at N >= 768).
constexpr int64_t kMaxPanelsForUnpackedA = 16;
// The same for a transposed A (tile by tile: see multiply_block), when its rows are at most
// kMaxRowBytesForUnpackedAT long: a tile reads one stretch of MR values from each of kc rows, lda
// apart, so wide rows spread a tile over many pages (kc = 256 rows of 4 KB: 1 MB), and in place
// was slower there (the dW product 1024 x 256 x 2368, lda = 1024: 0.945x; lda = 128-768: 1.04-1.19x).
constexpr int64_t kMaxPanelsForUnpackedAT = 8;
constexpr int64_t kMaxRowBytesForUnpackedAT = 3072;

// A grow-only, 64-byte aligned scratch buffer. Each thread keeps its own (thread_local below), so
// a call allocates nothing once the largest shape has been seen: a fresh aligned_alloc of the
// packing buffers on every call came back as fresh mmap'd pages whenever the allocator had
// trimmed its heap (after PyTorch ran in the same process, say), and their page faults cost a
// third of a 2 ms product.
template <typename T>
class PackBuffer {
public:
    T* get(int64_t count) {
        if (count > capacity_) {
            std::free(data_);
            const size_t bytes = ((size_t(count) * sizeof(T) + 63) / 64) * 64;
            data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
            if (!data_) throw std::bad_alloc();
            capacity_ = count;
        }
        return data_;
    }
    ~PackBuffer() { std::free(data_); }

private:
    T* data_ = nullptr;
    int64_t capacity_ = 0;
};

// The packed B slice of the calling thread (shared with its team when the threads split the
// panels; each thread's own when they split the rows) and each thread's packed A block: two
// buffers, since the calling thread also packs A blocks as a team member.
template <typename T>
T* b_pack_buffer(int64_t count) {
    thread_local PackBuffer<T> buffer;
    return buffer.get(count);
}
template <typename T>
T* a_pack_buffer(int64_t count) {
    thread_local PackBuffer<T> buffer;
    return buffer.get(count);
}

// Element (i, k) of op(A).
template <typename T>
inline T a_at(const T* A, int64_t lda, bool trans_a, int64_t i, int64_t k) {
    return trans_a ? A[k * lda + i] : A[i * lda + k];
}

// How far past its own tile (in elements of a row of A) the transposed-A packing prefetches.
constexpr int64_t kPackAheadElems = 16;

// Pack rows [i0, i0+mc) x cols [k0, k0+kc) of op(A) into MR-tall panels, zero-padding the edge.
// MR_FIXED > 0 is MR known at compile time (the register tiles of the ISAs), so the per-k copies
// of MR values become fixed-length moves; 0 takes MR at run time.
template <typename T, int MR_FIXED>
void pack_a_tiles(const T* A, int64_t lda, bool trans_a, int64_t i0, int64_t mc, int64_t k0,
                  int64_t kc, int mr, T* out) {
    const int MR = MR_FIXED > 0 ? MR_FIXED : mr;
    for (int64_t ip = 0; ip < mc; ip += MR) {
        const int rows = int(std::min<int64_t>(MR, mc - ip));
        T* panel = out + ip * kc;
        if (!trans_a) {
            for (int r = 0; r < rows; ++r) {
                const T* src = A + (i0 + ip + r) * lda + k0;
                for (int64_t p = 0; p < kc; ++p) panel[p * MR + r] = src[p];
            }
        } else if (rows == MR) {
            // The tile's kc rows are lda apart, so each is a new line and the hardware prefetcher
            // does not follow; ask for the line of the tiles that come after this one's (within
            // the block) while this one is copied.
            const int64_t ahead = ip + MR + kPackAheadElems < mc ? MR + kPackAheadElems : 0;
            // (a fixed-size memcpy: the element loop compiled to one scalar move per element,
            // the compiler not knowing that panel and A do not overlap)
            for (int64_t p = 0; p < kc; ++p) {
                const T* src = A + (k0 + p) * lda + i0 + ip;
                if (ahead) __builtin_prefetch(src + ahead, 0, 3);
                std::memcpy(panel + p * MR, src, sizeof(T) * size_t(MR));
            }
        } else {
            for (int64_t p = 0; p < kc; ++p) {
                const T* src = A + (k0 + p) * lda + i0 + ip;
                for (int r = 0; r < rows; ++r) panel[p * MR + r] = src[r];
            }
        }
        for (int r = rows; r < MR; ++r)
            for (int64_t p = 0; p < kc; ++p) panel[p * MR + r] = T(0);
    }
}

// Calls f(std::integral_constant<int, W>) with W = width if width is one of Fixed..., else W = 0
// (the width known only at run time): the packing loops below for the ISAs' register tiles.
template <int... Fixed, typename F>
void with_fixed_width(int width, F&& f) {
    const bool fixed = ((width == Fixed ? (f(std::integral_constant<int, Fixed>{}), true) : false) ||
                        ...);
    if (!fixed) f(std::integral_constant<int, 0>{});
}

template <typename T>
void pack_a(const T* A, int64_t lda, bool trans_a, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            int MR, T* out) {
    with_fixed_width<6, 8>(MR, [&](auto w) {
        pack_a_tiles<T, decltype(w)::value>(A, lda, trans_a, i0, mc, k0, kc, MR, out);
    });
}

// Pack rows [k0, k0+kc) x cols [j0, j0+nc) of op(B) into NR-wide panels, zero-padding the edge.
// NR_FIXED as MR_FIXED above: a whole row of a panel becomes a fixed-length (vector) move.
template <typename T, int NR_FIXED>
void pack_b_panels(const T* B, int64_t ldb, bool trans_b, int64_t k0, int64_t kc, int64_t j0,
                   int64_t nc, int nr, T* out, int64_t panel_stride) {
    const int NR = NR_FIXED > 0 ? NR_FIXED : nr;
    // An untransposed B's whole panels row by row of B: each row of the slice is read once, in
    // order (panel by panel, every panel pass read a short piece of each of kc rows a row
    // apart, and waited for them), and its NR-wide pieces go to their panels.
    const int64_t whole = trans_b ? 0 : nc / NR * NR;
    for (int64_t p = 0; whole > 0 && p < kc; ++p) {
        const T* src = B + (k0 + p) * ldb + j0;
        for (int64_t jp = 0; jp < whole; jp += NR)
            std::memcpy(out + jp * panel_stride + p * NR, src + jp, sizeof(T) * size_t(NR));
    }
    for (int64_t jp = whole; jp < nc; jp += NR) {
        const int cols = int(std::min<int64_t>(NR, nc - jp));
        T* panel = out + jp * panel_stride;
        if (!trans_b) {
            for (int64_t p = 0; p < kc; ++p) {
                const T* src = B + (k0 + p) * ldb + j0 + jp;
                T* dst = panel + p * NR;
                for (int q = 0; q < cols; ++q) dst[q] = src[q];
                for (int q = cols; q < NR; ++q) dst[q] = T(0);
            }
        } else {
            // op(B) = B^T (a linear's weight): the panel is a transpose of cols rows of B, the
            // vector kernel's (as a scalar loop storing one element at a time, 2% of the P2
            // encoder stream, whose linears are 64 x 64 to 64 x 192)
            vec<T>().transpose(panel, NR, B + (j0 + jp) * ldb + k0, ldb, cols, kc);
            for (int64_t p = 0; p < kc; ++p)
                for (int q = cols; q < NR; ++q) panel[p * NR + q] = T(0);
        }
    }
}

// Panels of nc columns from j0 (the last one partial when nc is not a multiple of NR), panel
// jp / NR at out + jp * panel_stride (>= kc).
template <typename T>
void pack_b(const T* B, int64_t ldb, bool trans_b, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
            int NR, T* out, int64_t panel_stride) {
    with_fixed_width<8, 16, 32>(NR, [&](auto w) {
        pack_b_panels<T, decltype(w)::value>(B, ldb, trans_b, k0, kc, j0, nc, NR, out,
                                             panel_stride);
    });
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const T* bias,
          bool relu) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == T(0)) {
        // Nothing to multiply: C = beta * C + bias (beta == 0 overwrites, even NaN).
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
                T& c = C[i * ldc + j];
                c = (beta == T(0) ? T(0) : beta * c) + (bias ? bias[j] : T(0));
                if (relu) c = c > T(0) ? c : T(0);
            }
        return;
    }
    const GemmMicroKernel<T>& micro = gemm_micro<T>();
    const int MR = micro.mr, NR = micro.nr;
    const int64_t KC = micro.kc, MC = micro.mc;
    const int64_t nc_max = std::min<int64_t>(NC, ((N + NR - 1) / NR) * NR);
    const int64_t kc_max = std::min<int64_t>(KC, K);
    T* const b_packed = b_pack_buffer<T>(nc_max * kc_max);
    // Threads only pay off above some work: waking a team costs microseconds, and a busy machine
    // makes every barrier dearer. Below ~0.5 M multiply-adds the calling thread does it alone.
    const bool parallel = !in_parallel_region() && get_num_threads() > 1 &&
                          double(M) * double(N) * double(K) >= 5e5;

    std::atomic<bool> out_of_memory{false};
    // One parallel region per call. Inside it the threads split the work one of two ways (below);
    // both multiply an MC block of op(A) rows, in MR-row tiles, with a range of packed B panels.
#pragma omp parallel if (parallel) num_threads(kernels::get_num_threads())
    {
#ifdef RMT_HAVE_OPENMP
        const int nthreads = omp_get_num_threads(), tid = omp_get_thread_num();
#else
        const int nthreads = 1, tid = 0;
#endif
        T* const a_packed = a_pack_buffer<T>(MC * kc_max);
        // Panels [p_begin, p_end) of the B slice (columns j0 .., depth k0 .. k0 + kc) packed
        // into buffer, at the fixed stride kc_max.
        auto pack_panels = [&](T* buffer, int64_t p_begin, int64_t p_end, int64_t j0, int64_t nc,
                               int64_t k0, int64_t kc) {
            const int64_t jp = p_begin * NR;
            if (p_end > p_begin)
                pack_b(B, ldb, trans_b, k0, kc, j0 + jp, std::min<int64_t>((p_end - p_begin) * NR,
                                                                            nc - jp),
                       NR, buffer + jp * kc_max, kc_max);
        };
        // Rows [i0, i0 + mc) of op(A) against panels [p_begin, p_end) of the B slice packed at
        // b_slice (columns j0.., depth k0 .. k0 + kc).
        auto multiply_block = [&](const T* b_slice, int64_t i0, int64_t mc, int64_t p_begin,
                                  int64_t p_end, int64_t j0, int64_t nc, int64_t k0, int64_t kc) {
            const T beta_slice = k0 == 0 ? beta : T(1);
            const T* bias_slice = k0 == 0 && bias ? bias + j0 : nullptr;   // added once
            const bool relu_slice = relu && k0 + kc >= K;   // on the finished sums only
            // Against few B panels an untransposed A is read in place: packing it is a pass over
            // the block that those few panels do not amortise (up to a sixth of the time at N =
            // 128). Against many, the packed block wins back more than that: each panel re-reads
            // it from L2 as one stream rather than MR. Only a partial last panel is packed then
            // (zero rows past M). A transposed A has its MR values of one k together but its k a
            // row apart: read in place panel by panel, every panel re-read the tile's kc rows from
            // L2 (the models' dW products ran at 0.75-0.9x), so in place it goes tile by tile
            // (below), and only against few panels of narrow rows; otherwise it is packed.
            const bool at_in_place = trans_a && p_end - p_begin <= kMaxPanelsForUnpackedAT &&
                                     lda * int64_t(sizeof(T)) <= kMaxRowBytesForUnpackedAT;
            const bool a_in_place =
                (!trans_a && p_end - p_begin <= kMaxPanelsForUnpackedA) || at_in_place;
            const int64_t full_rows = a_in_place ? mc / MR * MR : 0;
            if (full_rows < mc)
                pack_a(A, lda, trans_a, i0 + full_rows, mc - full_rows, k0, kc, MR,
                       a_packed + full_rows * kc);
            // One MR x NR tile of C: rows ip.. of the block against panel `panel`, A read in
            // place (untransposed: MR rows; transposed: the MR values of each k, a row apart)
            // or from the packed block.
            auto tile = [&](int64_t ip, int64_t panel) {
                const int64_t jp = panel * NR;
                const int m = int(std::min<int64_t>(MR, mc - ip));
                const int n = int(std::min<int64_t>(NR, nc - jp));
                T* c_tile = C + (i0 + ip) * ldc + j0 + jp;
                const T* bias_tile = bias_slice ? bias_slice + jp : nullptr;
                const T* b_panel = b_slice + jp * kc_max;
                if (ip >= full_rows)
                    micro.run(kc, a_packed + ip * kc, 1, MR, b_panel, c_tile, ldc, alpha,
                              beta_slice, m, n, bias_tile, relu_slice);
                else if (trans_a)
                    micro.run(kc, A + k0 * lda + i0 + ip, 1, lda, b_panel, c_tile, ldc, alpha,
                              beta_slice, m, n, bias_tile, relu_slice);
                else
                    micro.run(kc, A + (i0 + ip) * lda + k0, lda, 1, b_panel, c_tile, ldc, alpha,
                              beta_slice, m, n, bias_tile, relu_slice);
            };
            if (at_in_place) {
                // tile by tile: each tile's kc rows of the transposed A are read once from L2
                // and stay in L1 while the few panels multiply them
                for (int64_t ip = 0; ip < mc; ip += MR)
                    for (int64_t panel = p_begin; panel < p_end; ++panel) tile(ip, panel);
            } else {
                for (int64_t panel = p_begin; panel < p_end; ++panel)
                    for (int64_t ip = 0; ip < mc; ip += MR) tile(ip, panel);
            }
        };
        // Split by rows, for a transposed A with more rows of op(A) than a column block of B has
        // columns (the models' weight gradients dW = dY^T X: C .. 4C rows against C columns,
        // B x T deep): each thread takes a contiguous range of the rows and packs the whole B
        // slice into a buffer of its own. What every thread then does again is the packing of
        // B, the smaller operand; split by panels, each thread packed all of A (when a
        // transposed A was always packed), and the copy model's dW products ran 1.1-1.25x
        // slower at 2 threads. An untransposed A against at most kMaxPanelsForUnpackedA panels a thread is
        // read in place, so there a panel split costs only a second read of A, and measured as
        // fast. No thread reads what another wrote, so no barriers.
        const bool split_rows = trans_a && nthreads > 1 && M > nc_max && M >= 2 * nthreads * MR;
        if (split_rows) {
            // this thread's own; an allocation that fails is reported after the region (an
            // exception must not leave it), and with no barriers here the thread can just stop
            T* b_own = nullptr;
            try {
                b_own = b_pack_buffer<T>(nc_max * kc_max);
            } catch (const std::bad_alloc&) {
                out_of_memory.store(true);
            }
            const int64_t row_begin = M * tid / nthreads / MR * MR;
            const int64_t row_end = tid + 1 == nthreads ? M : M * (tid + 1) / nthreads / MR * MR;
            for (int64_t j0 = 0; b_own && j0 < N; j0 += NC) {
                const int64_t nc = std::min<int64_t>(NC, N - j0);
                const int64_t n_panels = (nc + NR - 1) / NR;
                for (int64_t k0 = 0; k0 < K; k0 += KC) {
                    const int64_t kc = std::min<int64_t>(KC, K - k0);
                    pack_panels(b_own, 0, n_panels, j0, nc, k0, kc);
                    for (int64_t i0 = row_begin; i0 < row_end; i0 += MC)
                        multiply_block(b_own, i0, std::min<int64_t>(MC, row_end - i0), 0,
                                       n_panels, j0, nc, k0, kc);
                }
            }
        } else {
            // Split by panels: each (NC, KC) slice of B is packed once, cooperatively, into the
            // calling thread's buffer.
            const int64_t m_blocks = (M + MC - 1) / MC;
            for (int64_t j0 = 0; j0 < N; j0 += NC) {
                // A new column block hands the panels out afresh: a thread's first panels may be
                // ones another thread is still multiplying with from the last block (N > NC at 2
                // threads gave wrong columns, intermittently), so all wait here first.
                if (j0 > 0) {
#pragma omp barrier
                }
                const int64_t nc = std::min<int64_t>(NC, N - j0);
                const int64_t n_panels = (nc + NR - 1) / NR;
                // Each thread owns a contiguous range of B panels when there are enough of them:
                // it packs those panels itself and multiplies every A block with them only, so the
                // panels it reads stay in its own L2 (reading panels packed by the other core
                // halved the 2-thread speed). With fewer panels than threads, the M blocks are
                // split.
                const bool split_panels = n_panels >= nthreads;
                const int64_t p_begin = split_panels ? n_panels * tid / nthreads : 0;
                const int64_t p_end = split_panels ? n_panels * (tid + 1) / nthreads : n_panels;
                for (int64_t k0 = 0; k0 < K; k0 += KC) {
                    const int64_t kc = std::min<int64_t>(KC, K - k0);
                    if (split_panels) {
                        pack_panels(b_packed, p_begin, p_end, j0, nc, k0, kc);
                    } else {
#pragma omp barrier
#pragma omp for schedule(static)
                        for (int64_t panel = 0; panel < n_panels; ++panel)
                            pack_panels(b_packed, panel, panel + 1, j0, nc, k0, kc);
                    }
                    const int64_t b_begin = split_panels ? 0 : m_blocks * tid / nthreads;
                    const int64_t b_end = split_panels ? m_blocks : m_blocks * (tid + 1) / nthreads;
                    for (int64_t block = b_begin; block < b_end; ++block)
                        multiply_block(b_packed, block * MC, std::min<int64_t>(MC, M - block * MC),
                                       p_begin, p_end, j0, nc, k0, kc);
                    // Panels sit at a fixed stride (kc_max) whatever this slice's kc, so a panel
                    // owner repacking its part for the next slice never touches another thread's
                    // panels. Panel owners reuse only their own part of b_packed in the next
                    // slice, so no barrier is needed there; the block split shares b_packed and
                    // waits (above and at the end of the omp for) before repacking it.
                }
            }
        }
    }
    if (out_of_memory.load()) throw std::bad_alloc();
}

int64_t gemm_nc() { return NC; }

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t, const float*, bool);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t, const double*,
                           bool);

}  // namespace rmt::kernels
