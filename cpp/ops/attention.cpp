// Per (batch, head) the products are small GEMMs on strided head slices (row stride C), so no
// head is ever transposed or copied out; the (batch, head) pairs run in parallel and the GEMM
// inside each one stays on its thread (kernels::gemm goes serial inside a parallel region).
// The pairs are taken head-major (every batch row of head 0, then of head 1, ...), so the two
// threads work on different batch rows at any time: batch-major, they wrote neighbouring heads of
// one row at once, and those head slices share a cache line where they meet unless a row and a
// head start on line boundaries (the model's buffers are 64-byte aligned now, but hs * 4 bytes
// need not be a whole number of lines, and callers' arrays need not be aligned). That false
// sharing cost a quarter of the relative attention backward at 2 threads (69.6 -> 51.6 ms a copy
// step). With one batch row (B = 1) the order is unchanged. probs stays (B, NH, Tq, Tk).
#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/gemm.hpp"
#include "kernels/isa.hpp"
#include "kernels/threads.hpp"
#include "ops/softmax_rows.hpp"

namespace rmt::ops {

using kernels::gemm;

namespace {

// Threads pay off only past some tens of microseconds of work: waking them costs more than a
// tiny (batch, head) loop, and much more when other processes hold the cores.
bool is_small(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t hs) {
    return B * NH * Tq * Tk * (hs + 8) < (int64_t(1) << 16);
}

// Split the (batch, head) pairs over threads? (Otherwise a single large pair lets each GEMM
// use the threads itself.)
bool split_heads(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t hs) {
    return B * NH > 1 && !is_small(B, NH, Tq, Tk, hs) && !kernels::in_parallel_region();
}

// kernels::gemm starts its own threads unless it runs inside a parallel region; a small problem
// keeps every GEMM on the calling thread for the scope of this guard.
class SerialIfSmall {
public:
    SerialIfSmall(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t hs)
        : scope_(is_small(B, NH, Tq, Tk, hs) && !kernels::in_parallel_region()) {}

private:
    kernels::SerialScope scope_;
};

// The per-head products go through head_gemm: heads this small (a 76 x 76 x 16 head of the P2
// encoder, 72 x 72 x 64 of the copy model) take kernels' unpacked small_gemm; there the blocked
// GEMM's packing and set-up cost several times the arithmetic. small_gemm reads a transposed A in
// place; a transposed B (the keys of q k^T) is transposed, and a ragged last vector of columns
// padded, in per-thread scratch. Bigger heads take the blocked GEMM.
bool small_product(int64_t M, int64_t N, int64_t K) {
    return M * N * K <= (int64_t(1) << 20);
}

int64_t round_up(int64_t n, int64_t unit) { return (n + unit - 1) / unit * unit; }

// Zeroes one head's slice (rows x hs, row stride C) of a gradient the op overwrites.
template <typename T>
void zero_head(T* x, int64_t rows, int64_t hs, int64_t C) {
    for (int64_t i = 0; i < rows; ++i) std::fill(x + i * C, x + i * C + hs, T(0));
}

// Asks for one head's slice (rows x hs, row stride C) in cache ahead of its use: a pair reads
// its q, k, v (and dout) slices once, a row of C apart, and those rows come from buffers of the
// whole batch (several MB, out of L2) that the hardware prefetchers follow poorly across pages.
// Issued for the pair this thread takes next, they arrive while the current pair computes.
// Gradient slices, which the pair reads and writes, are asked for with intent to write.
template <bool kForWrite = false, typename T>
void prefetch_head(const T* x, int64_t rows, int64_t hs, int64_t C) {
    constexpr int64_t kLineElems = 64 / int64_t(sizeof(T));
    constexpr int kWrite = kForWrite ? 1 : 0;
    for (int64_t i = 0; i < rows; ++i) {
        const T* row = x + i * C;
        for (int64_t d = 0; d < hs; d += kLineElems) __builtin_prefetch(row + d, kWrite, 2);
        __builtin_prefetch(row + hs - 1, kWrite, 2);   // an unaligned row's last line
    }
}

// prefetch_head of pair bh's slice of x, a (B, rows, C) buffer whose head h is columns
// [h * hs, (h + 1) * hs); the pairs are taken head-major (bh = h * B + b).
template <bool kForWrite = false, typename T>
void prefetch_pair(const T* x, int64_t bh, int64_t B, int64_t rows, int64_t hs, int64_t C) {
    prefetch_head<kForWrite>(x + (bh % B) * rows * C + (bh / B) * hs, rows, hs, C);
}

// The pair this thread takes after bh, assuming the dynamic schedule hands the pairs out in turn.
inline int64_t next_pair(int64_t bh) {
#ifdef RMT_HAVE_OPENMP
    return bh + omp_get_num_threads();
#else
    return bh + 1;
#endif
}

// Per-thread scratch that only grows: after the first step no product allocates. SLOT_B and
// SLOT_C_TAIL hold head_gemm's transposed or padded operands; SLOT_DBD and SLOT_DBD_SUMS the
// relative attention backward's whole-call buffers (dBD of every (batch, head) pair, a few MB,
// and its column sums per pair: a fresh allocation of that size would be fresh pages, and their
// page faults, on every call); SLOT_RK_T the forward's transposed position keys.
// SLOT_S the plain attention forward's padded scores.
constexpr int SLOT_B = 0, SLOT_C_TAIL = 1, SLOT_DBD_SUMS = 2, SLOT_DBD = 3, SLOT_RK_T = 4,
              SLOT_S = 5;
template <typename T>
T* scratch(int slot, size_t n) {
    thread_local std::vector<T> buffers[6];
    std::vector<T>& b = buffers[slot];
    if (b.size() < n) b.resize(n);
    return b.data();
}

// out (cols x Np, Np >= rows) = x (rows x cols, row stride ld) transposed, the columns past rows
// zero: a head's keys (or values, or position keys) as the K x N operand small_gemm reads by
// whole vectors. The transpose is a vector kernel: as a scalar loop, storing one element at a
// time, it took as long as the product Q K^T it feeds at the P2 encoder's 16-wide heads.
template <typename T>
void transpose_padded_into(T* out, const T* x, int64_t rows, int64_t cols, int64_t ld,
                           int64_t Np) {
    kernels::vec<T>().transpose(out, Np, x, ld, rows, cols);
    for (int64_t c = 0; c < cols; ++c) std::fill(out + c * Np + rows, out + (c + 1) * Np, T(0));
}

// The same into scratch SLOT_B.
template <typename T>
const T* transposed_padded(const T* x, int64_t rows, int64_t cols, int64_t ld, int64_t Np) {
    T* t = scratch<T>(SLOT_B, size_t(cols * Np));
    transpose_padded_into(t, x, rows, cols, ld, Np);
    return t;
}

// C (M x N, ldc) = alpha op(A) op(B) + beta C, row-major, op = transpose when trans_*; beta is
// 0 (C is overwritten, never read) or 1.
template <typename T>
void head_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    if (!small_product(M, N, K)) {
        gemm<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (M == 0 || N == 0) return;
    const bool accumulate = beta != T(0);
    const auto& vec = kernels::vec<T>();
    // small_gemm only broadcasts A's elements, so a transposed A (stored K x M) is read in place
    const int64_t a_rs = trans_a ? 1 : lda, a_cs = trans_a ? lda : 1;
    // B^T stored N x K: make it K x Np rows, Np a whole number of vectors (zero padding)
    const int64_t pad = kernels::pad_elements<T>();
    const int64_t whole = N / pad * pad;
    if (trans_b) {
        const int64_t Np = round_up(N, pad);
        B = transposed_padded(B, N, K, ldb, Np);
        ldb = Np;
    }
    // The whole vectors straight into C; the last, partial one through scratch, its B columns
    // zero-padded to a whole vector.
    if (whole > 0) vec.small_gemm(M, whole, K, alpha, A, a_rs, a_cs, B, ldb, C, ldc, accumulate);
    if (whole == N) return;
    const T* b_tail = B + whole;
    int64_t ld_tail = ldb;
    if (!trans_b) {
        T* t = scratch<T>(SLOT_B, size_t(K * pad));
        for (int64_t k = 0; k < K; ++k) {
            std::copy(B + k * ldb + whole, B + k * ldb + N, t + k * pad);
            std::fill(t + k * pad + (N - whole), t + (k + 1) * pad, T(0));
        }
        b_tail = t;
        ld_tail = pad;
    }
    T* c = scratch<T>(SLOT_C_TAIL, size_t(M * pad));
    vec.small_gemm(M, pad, K, alpha, A, a_rs, a_cs, b_tail, ld_tail, c, pad, false);
    for (int64_t i = 0; i < M; ++i) {
        T* dst = C + i * ldc + whole;
        const T* src = c + i * pad;
        if (accumulate)
            for (int64_t j = 0; j < N - whole; ++j) dst[j] += src[j];
        else
            std::copy(src, src + (N - whole), dst);
    }
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, const uint8_t* allowed,
                       int64_t mask_batch_stride, int64_t B, int64_t Tq, int64_t Tk, int64_t NH,
                       int64_t hs) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Tq, Tk, hs);
    // each mask's runs of rows, found once rather than by each head (the scan of every mask row
    // per head was 4% of the P2 encoder stream)
    const int64_t mask_sets = allowed && mask_batch_stride != 0 ? B : 1;
    std::vector<std::vector<MaskRowRun>> runs(static_cast<size_t>(mask_sets));
    for (int64_t b = 0; b < mask_sets; ++b)
        runs[size_t(b)] = mask_row_runs(allowed ? allowed + b * mask_batch_stride : nullptr, Tq,
                                        Tk, Tq);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (split_heads(B, NH, Tq, Tk, hs)) \
    num_threads(kernels::get_num_threads())
#endif
    for (int64_t bh = 0; bh < B * NH; ++bh) {
        const int64_t h = bh / B, b = bh % B;
        const T* qh = q + b * Tq * C + h * hs;
        const T* kh = k + b * Tk * C + h * hs;
        const T* vh = v + b * Tk * C + h * hs;
        T* oh = out + b * Tq * C + h * hs;
        T* p = probs + (b * NH + h) * Tq * Tk;
        const uint8_t* allowed_b = allowed ? allowed + b * mask_batch_stride : nullptr;
        const std::vector<MaskRowRun>& mask_runs = runs[size_t(mask_sets > 1 ? b : 0)];
        // S = q k^T / sqrt(hs), then the masked softmax
        if (small_product(Tq, Tk, hs)) {
            // S in scratch with rows padded to whole vectors (the transposed keys' zero
            // columns), so small_gemm writes every column straight from its registers: written
            // into probs' Tk-wide rows, a ragged last vector went through a scratch tile and a
            // copy of its own. The softmax then reads S and writes probs.
            const int64_t Np = round_up(Tk, kernels::pad_elements<T>());
            T* s = scratch<T>(SLOT_S, size_t(Tq * Np));
            kernels::vec<T>().small_gemm(Tq, Np, hs, scale, qh, C, 1,
                                         transposed_padded(kh, Tk, hs, C, Np), Np, s, Np, false);
            softmax_row_runs<T>(p, s, Np, allowed_b, mask_runs, Tk, Tq);
        } else {
            head_gemm<T>(false, true, Tq, Tk, hs, scale, qh, C, kh, C, T(0), p, Tk);
            softmax_row_runs<T>(p, p, Tk, allowed_b, mask_runs, Tk, Tq);
        }
        // out = P v (a query with nothing allowed has P = 0, so outputs 0)
        head_gemm<T>(false, false, Tq, hs, Tk, T(1), p, Tk, vh, C, T(0), oh, C);
    }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t hs,
                        bool overwrite) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Tq, Tk, hs);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Tq, Tk, hs)) num_threads(kernels::get_num_threads())
#endif
    {
        std::vector<T> ds(size_t(Tq * Tk));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t bh = 0; bh < B * NH; ++bh) {
            const int64_t h = bh / B, b = bh % B;
            const T* qh = q + b * Tq * C + h * hs;
            const T* kh = k + b * Tk * C + h * hs;
            const T* vh = v + b * Tk * C + h * hs;
            const T* doh = dout + b * Tq * C + h * hs;
            const T* p = probs + (b * NH + h) * Tq * Tk;
            T* dqh = dq + b * Tq * C + h * hs;
            T* dkh = dk + b * Tk * C + h * hs;
            T* dvh = dv + b * Tk * C + h * hs;
            if (overwrite) {
                zero_head(dqh, Tq, hs, C);
                zero_head(dkh, Tk, hs, C);
                zero_head(dvh, Tk, hs, C);
            }
            // out = P v:  dP = dout v^T,  dv += P^T dout
            head_gemm<T>(false, true, Tq, Tk, hs, T(1), doh, C, vh, C, T(0), ds.data(), Tk);
            head_gemm<T>(true, false, Tk, hs, Tq, T(1), p, Tk, doh, C, T(1), dvh, C);
            // P = softmax(S): dS = P (dP - <dP, P>), with the 1/sqrt(hs) of S folded in
            softmax_rows_backward<T>(ds.data(), ds.data(), p, Tq, Tk, scale, true);
            // S = q k^T:  dq += dS k,  dk += dS^T q
            head_gemm<T>(false, false, Tq, hs, Tk, T(1), ds.data(), Tk, kh, C, T(1), dqh, C);
            head_gemm<T>(true, false, Tk, hs, Tq, T(1), ds.data(), Tk, qh, C, T(1), dkh, C);
        }
    }
}

namespace {

// Row blocks of the relative attention: a block of kRowBlock query rows computes scores, and
// reduces over keys, only up to the block's last allowed key. Under a causal or memory mask
// ([read | tokens | write] rows: the read rows see the read block, token rows the tokens before
// them) a third to a half of the (query, key) pairs are masked, and their products are skipped
// instead of computed and thrown away. A multiple of the 6-row small_gemm block. Smaller blocks
// skip more, but each block's products are separate small_gemm calls: 24 rows beat 12 by about
// 1.06x on the models' shapes (fewer calls, and fewer round trips of the accumulated dk and dv),
// and 36 rows skipped too little (1.04x).
constexpr int64_t kRowBlock = 24;

int64_t row_blocks(int64_t Q) { return (Q + kRowBlock - 1) / kRowBlock; }

// hi[blk] = 1 + the last key that any row of block blk may attend (0: none), from the mask
// (R x K rows of 0/1). The backward reads its ends off the saved probabilities instead
// (block_key_ends_from_probs below): a key whose probability is exactly 0 contributes nothing to
// any gradient either.
template <typename Row>
void block_key_ends(int64_t* hi, int64_t Q, int64_t K, Row nonzero) {
    for (int64_t blk = 0; blk * kRowBlock < Q; ++blk) {
        int64_t end = 0;
        for (int64_t i = blk * kRowBlock; i < std::min(Q, (blk + 1) * kRowBlock); ++i) {
            int64_t j = K;
            while (j > end && !nonzero(i, j - 1)) --j;
            end = std::max(end, j);
        }
        hi[blk] = end;
    }
}

// The number of score columns a block computes: its key end rounded up to whole vectors (the
// extra columns hold masked keys' scores, or the zero pad of k_t from K to Kp, and are never
// read). The scores go to per-thread rows of Kp >= that many columns, so head_gemm never takes
// its ragged-tail path (a scratch tile and a copy); the softmax then reads them there and
// writes the K-wide rows of P.
template <typename T>
int64_t score_columns(int64_t hi) {
    return round_up(hi, kernels::pad_elements<T>());
}

// out[j] += the column sums of x (rows x cols, row stride ld), a row at a time (the same sums,
// in the same order, as the scalar loop; one kernel call, with the sums in registers, where an
// axpy per row of 72 values spent more on the call than on the adds)
template <typename T>
void add_column_sums(T* out, const T* x, int64_t rows, int64_t cols, int64_t ld) {
    kernels::vec<T>().add_rows(nullptr, 0, x, ld, rows, cols, out);
}

// Each row block's key end read back off the saved probabilities: one past the last key with a
// nonzero probability in any row of the block. Probabilities are >= 0, so a column sum is 0
// exactly when the whole column is (and a NaN counts as nonzero); the sums vectorise, where a
// per-row scan from the end branched on every element. col_sum: K values of scratch.
template <typename T>
void block_key_ends_from_probs(int64_t* hi, const T* p, int64_t Q, int64_t K, T* col_sum) {
    for (int64_t blk = 0; blk * kRowBlock < Q; ++blk) {
        const int64_t i0 = blk * kRowBlock, rows = std::min(kRowBlock, Q - i0);
        std::fill(col_sum, col_sum + K, T(0));
        add_column_sums(col_sum, p + i0 * K, rows, K, K);
        int64_t end = K;
        while (end > 0 && !(col_sum[end - 1] != T(0))) --end;
        hi[blk] = end;
    }
}

}  // namespace

template <typename T>
void rel_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, const T* rk,
                           const T* u_bias, const T* v_bias, const uint8_t* allowed,
                           int64_t mask_batch_stride, int64_t B, int64_t Q, int64_t K, int64_t NH,
                           int64_t hs) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Q, K, hs);
    const auto& vk = kernels::vec<T>();
    // rk^T of every head, hs x Kp (Kp: K rounded up to whole vectors, zero columns after K), made
    // once here rather than by each of the B (batch, head) products of that head.
    const int64_t Kp = round_up(K, kernels::pad_elements<T>());
    T* rk_t = scratch<T>(SLOT_RK_T, size_t(NH * hs * Kp));
    for (int64_t h = 0; h < NH; ++h) transpose_padded_into(rk_t + h * hs * Kp, rk + h * hs, K, hs, C, Kp);
    // each row block's key end, per batch row of the mask (one shared mask: one set)
    const int64_t nblk = row_blocks(Q);
    const int64_t mask_sets = allowed && mask_batch_stride != 0 ? B : 1;
    std::vector<int64_t> key_end(size_t(mask_sets * nblk), K);
    if (allowed)
        for (int64_t b = 0; b < mask_sets; ++b) {
            const uint8_t* a = allowed + b * mask_batch_stride;
            block_key_ends(key_end.data() + b * nblk, Q, K,
                           [a, K](int64_t i, int64_t j) { return a[i * K + j] != 0; });
        }
    // and the runs of each block's mask rows for its softmax, found once here: found per
    // (batch, head) pair and block, the scan was a sixth of the copy model's forward
    std::vector<std::vector<MaskRowRun>> block_runs(size_t(mask_sets * nblk));
    for (int64_t b = 0; b < mask_sets; ++b)
        for (int64_t blk = 0; blk < nblk; ++blk) {
            const int64_t i0 = blk * kRowBlock, block_rows = std::min(kRowBlock, Q - i0);
            block_runs[size_t(b * nblk + blk)] =
                mask_row_runs(allowed ? allowed + b * mask_batch_stride + i0 * K : nullptr,
                              block_rows, K, block_rows);
        }
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Q, K, hs)) num_threads(kernels::get_num_threads())
#endif
    {
        std::vector<T> qu(size_t(Q * hs)), qv(size_t(Q * hs)), bd(size_t(Q * Kp)),
            k_t(size_t(hs * Kp)), scores(size_t(kRowBlock * Kp));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t bh = 0; bh < B * NH; ++bh) {
            const int64_t h = bh / B, b = bh % B;
            const T* qh = q + b * Q * C + h * hs;
            const T* kh = k + b * K * C + h * hs;
            const T* vh = v + b * K * C + h * hs;
            const T* uh = u_bias + h * hs;
            const T* vbh = v_bias + h * hs;
            const int64_t* ends = key_end.data() + (mask_sets > 1 ? b * nblk : 0);
            const std::vector<MaskRowRun>* runs = block_runs.data() + (mask_sets > 1 ? b * nblk : 0);
            T* oh = out + b * Q * C + h * hs;
            T* p = probs + (b * NH + h) * Q * K;
            if (const int64_t nb = next_pair(bh); nb < B * NH) {
                prefetch_pair(q, nb, B, Q, hs, C);
                prefetch_pair(k, nb, B, K, hs, C);
                prefetch_pair(v, nb, B, K, hs, C);
            }
            vk.add_bias_rows(qu.data(), hs, qh, C, uh, Q, hs);
            vk.add_bias_rows(qv.data(), hs, qh, C, vbh, Q, hs);
            transpose_padded_into(k_t.data(), kh, K, hs, C, Kp);
            const T* rk_th = rk_t + h * hs * Kp;
            for (int64_t blk = 0; blk < nblk; ++blk) {
                const int64_t i0 = blk * kRowBlock, block_rows = std::min(kRowBlock, Q - i0);
                const int64_t end = ends[blk];
                T* pb = p + i0 * K;
                if (end == 0) {   // no row of the block attends anything: P = 0, out = 0
                    std::fill(pb, pb + block_rows * K, T(0));
                    for (int64_t i = i0; i < i0 + block_rows; ++i)
                        std::fill(oh + i * C, oh + i * C + hs, T(0));
                    continue;
                }
                // content term: S = (q + u) k^T / sqrt(hs), keys [0, end) only
                T* sb = scores.data();
                head_gemm<T>(false, false, block_rows, score_columns<T>(end), hs, scale,
                             qu.data() + i0 * hs, hs, k_t.data(), Kp, T(0), sb, Kp);
                // position term against the distances these rows reach: BD[i, m] =
                // (q_i + v) . rk_m / sqrt(hs), then the rel shift S[i, j] += BD[i, j + Q-1-i]
                // where that index exists. The block reads BD from its last row's shift on
                // (rounded down to whole vectors), up to its first row's shift + end.
                const int64_t pad = kernels::pad_elements<T>();
                const int64_t bd_lo = (Q - 1 - (i0 + block_rows - 1)) / pad * pad;
                const int64_t bd_cols = std::min(Kp, round_up(end + Q - 1 - i0, pad));
                if (bd_cols > bd_lo)
                    head_gemm<T>(false, false, block_rows, bd_cols - bd_lo, hs, scale,
                                 qv.data() + i0 * hs, hs, rk_th + bd_lo, Kp, T(0),
                                 bd.data() + i0 * Kp + bd_lo, Kp);
                for (int64_t i = i0; i < i0 + block_rows; ++i) {
                    const int64_t shift = Q - 1 - i;
                    const int64_t jend = std::min(K - shift, end);   // j + shift < K, j < end
                    vk.axpy(T(1), bd.data() + i * Kp + shift, sb + (i - i0) * Kp, jend);
                }
                // reads only the allowed keys, all before end; writes zeros after them
                softmax_row_runs<T>(pb, sb, Kp,
                                    allowed ? allowed + b * mask_batch_stride + i0 * K : nullptr,
                                    runs[blk], K, block_rows);
                head_gemm<T>(false, false, block_rows, hs, end, T(1), pb, K, vh, C, T(0), oh + i0 * C, C);
            }
        }
    }
}

template <typename T>
void rel_attention_backward(T* dq, T* dk, T* dv, T* drk, T* du_bias, T* dv_bias, const T* dout,
                            const T* q, const T* k, const T* v, const T* rk, const T* u_bias,
                            const T* v_bias, const T* probs, int64_t B, int64_t Q, int64_t K,
                            int64_t NH, int64_t hs, bool overwrite) {
    const int64_t C = NH * hs, rows = B * Q;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Q, K, hs);
    const auto& vk = kernels::vec<T>();
    // du is shared by the batch rows: with B > 1 each row accumulates into its own slice, summed
    // at the end, so the (batch, head) pairs stay independent. The position term's gradients
    // to drk and dv_bias are whole-batch products per head after the loop, from dBD of
    // every (batch, head) pair, (NH, B * Q, K), and from its column sums per pair, (NH, B, K),
    // which each pair takes while its dBD is in cache; summed over the batch in order after the
    // loop, so no sum depends on the thread count.
    std::vector<T> du_parts;
    if (B > 1) du_parts.assign(size_t(B * C), T(0));
    T* dbd_all = scratch<T>(SLOT_DBD, size_t(NH * rows * K));
    T* dbd_sums = scratch<T>(SLOT_DBD_SUMS, size_t(NH * B * K));
    const int64_t Kp = round_up(K, kernels::pad_elements<T>());
    const int64_t nblk = row_blocks(Q);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Q, K, hs)) num_threads(kernels::get_num_threads())
#endif
    {
        std::vector<T> qu(size_t(Q * hs)), dqx(size_t(Q * hs)), ds(size_t(Q * Kp)),
            v_t(size_t(hs * Kp)), col_sum(static_cast<size_t>(K));
        std::vector<int64_t> ends(static_cast<size_t>(nblk));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t bh = 0; bh < B * NH; ++bh) {
            const int64_t h = bh / B, b = bh % B;
            const T* qh = q + b * Q * C + h * hs;
            const T* kh = k + b * K * C + h * hs;
            const T* vh = v + b * K * C + h * hs;
            const T* uh = u_bias + h * hs;
            const T* doh = dout + b * Q * C + h * hs;
            const T* p = probs + (b * NH + h) * Q * K;
            T* dqh = dq + b * Q * C + h * hs;
            T* dkh = dk + b * K * C + h * hs;
            T* dvh = dv + b * K * C + h * hs;
            T* duh = (B > 1 ? du_parts.data() + b * C : du_bias) + h * hs;
            T* dbd = dbd_all + (h * B + b) * Q * K;
            if (const int64_t nb = next_pair(bh); nb < B * NH) {
                prefetch_pair(q, nb, B, Q, hs, C);
                prefetch_pair(k, nb, B, K, hs, C);
                prefetch_pair(v, nb, B, K, hs, C);
                prefetch_pair(dout, nb, B, Q, hs, C);
                prefetch_pair<true>(dq, nb, B, Q, hs, C);
                prefetch_pair<true>(dk, nb, B, K, hs, C);
                prefetch_pair<true>(dv, nb, B, K, hs, C);
            }
            if (overwrite) {
                zero_head(dqh, Q, hs, C);
                zero_head(dkh, K, hs, C);
                zero_head(dvh, K, hs, C);
            }
            vk.add_bias_rows(qu.data(), hs, qh, C, uh, Q, hs);
            transpose_padded_into(v_t.data(), vh, K, hs, C, Kp);
            // the keys each row block reaches: the forward's, read back off P
            block_key_ends_from_probs(ends.data(), p, Q, K, col_sum.data());
            for (int64_t blk = 0; blk < nblk; ++blk) {
                const int64_t i0 = blk * kRowBlock, block_rows = std::min(kRowBlock, Q - i0);
                const int64_t end = ends[blk];
                const T* pb = p + i0 * K;
                T* dsb = ds.data() + i0 * Kp;   // rows of Kp columns, as the forward's scores
                if (end > 0) {
                    // out = P v:  dP = dout v^T,  dv += P^T dout  (keys [0, end) only)
                    head_gemm<T>(false, false, block_rows, score_columns<T>(end), hs, T(1),
                                 doh + i0 * C, C, v_t.data(), Kp, T(0), dsb, Kp);
                    head_gemm<T>(true, false, end, hs, block_rows, T(1), pb, K, doh + i0 * C, C, T(1),
                                 dvh, C);
                    // P = softmax(S): dS = P (dP - <dP, P>) / sqrt(hs) (the gradient of both
                    // terms); P = 0 from end on, so the rows stop there
                    for (int64_t i = 0; i < block_rows; ++i)
                        softmax_rows_backward<T>(dsb + i * Kp, dsb + i * Kp, pb + i * K, 1, end,
                                                 scale, true);
                    // content term (q + u) k^T:  d(q + u) = dS k  (to dq and du),
                    // dk += dS^T (q + u)
                    head_gemm<T>(false, false, block_rows, hs, end, T(1), dsb, Kp, kh, C, T(0),
                                 dqx.data() + i0 * hs, hs);
                    head_gemm<T>(true, false, end, hs, block_rows, T(1), dsb, Kp,
                                 qu.data() + i0 * hs, hs, T(1), dkh, C);
                } else {
                    std::fill(dqx.data() + i0 * hs, dqx.data() + (i0 + block_rows) * hs, T(0));
                }
                // rel shift backward: scatter dS[i, j] (j < end; zero after) back to
                // BD[i, j + Q-1-i]
                int64_t bd_lo = K, bd_hi = 0;   // the columns of BD these rows reach
                for (int64_t i = i0; i < i0 + block_rows; ++i) {
                    const int64_t shift = std::min(Q - 1 - i, K);
                    const int64_t jend = std::max<int64_t>(0, std::min(K - shift, end));
                    T* brow = dbd + i * K;
                    std::fill(brow, brow + shift, T(0));
                    std::copy(ds.data() + i * Kp, ds.data() + i * Kp + jend, brow + shift);
                    std::fill(brow + shift + jend, brow + K, T(0));
                    if (jend > 0) {
                        bd_lo = std::min(bd_lo, shift);
                        bd_hi = std::max(bd_hi, shift + jend);
                    }
                }
                // position term (q + v) rk^T:  d(q + v) = dBD rk, to dq (dv_bias after the
                // loop), over those columns only: the shift leaves the rest of BD zero (up to
                // half of it under a causal or memory mask)
                if (bd_hi > bd_lo)
                    head_gemm<T>(false, false, block_rows, hs, bd_hi - bd_lo, T(1),
                                 dbd + i0 * K + bd_lo, K, rk + bd_lo * C + h * hs, C, T(1),
                                 dqh + i0 * C, C);
            }
            // dq += d(q + u) of the content term, du += its column sums, in one pass
            vk.add_rows(dqh, C, dqx.data(), hs, Q, hs, duh);
            T* sums = dbd_sums + (h * B + b) * K;
            std::fill(sums, sums + K, T(0));
            add_column_sums(sums, dbd, Q, K, K);
        }
    }
    if (B > 1)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t c = 0; c < C; ++c) du_bias[c] += du_parts[b * C + c];
    // position term (q + v) rk^T, per head over all rows (dq took dBD rk in the loop):
    // drk += dBD^T (q + v) = dBD^T q + (the column sums of dBD) v^T,
    // dv_bias += the column sums of dBD rk = (the column sums of dBD) rk
    std::vector<T> dbd_sum(static_cast<size_t>(K));
    for (int64_t h = 0; h < NH; ++h) {
        const T* dbd = dbd_all + h * rows * K;
        gemm<T>(true, false, K, hs, rows, T(1), dbd, K, q + h * hs, C, T(1), drk + h * hs, C);
        std::fill(dbd_sum.begin(), dbd_sum.end(), T(0));
        add_column_sums(dbd_sum.data(), dbd_sums + h * B * K, B, K, K);
        const T* vbh = v_bias + h * hs;
        for (int64_t m = 0; m < K; ++m) {
            vk.axpy(dbd_sum[m], vbh, drk + m * C + h * hs, hs);
            vk.axpy(dbd_sum[m], rk + m * C + h * hs, dv_bias + h * hs, hs);
        }
    }
}

template <typename T>
void rel_position_encoding(T* R, int64_t K, int64_t C, int64_t clamp_len) {
    const int64_t half = C / 2;
    for (int64_t r = 0; r < K; ++r) {
        int64_t p = K - 1 - r;
        if (clamp_len > 0) p = std::min(p, clamp_len);
        for (int64_t i = 0; i < half; ++i) {
            const double f = 1.0 / std::pow(10000.0, double(2 * i) / double(C));
            R[r * C + i] = T(std::sin(double(p) * f));
            R[r * C + half + i] = T(std::cos(double(p) * f));
        }
    }
}

#define RMT_INSTANTIATE(T)                                                                         \
    template void attention_forward<T>(T*, T*, const T*, const T*, const T*, const uint8_t*,       \
                                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);      \
    template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                        const T*, int64_t, int64_t, int64_t, int64_t, int64_t,     \
                                        bool);                                                     \
    template void rel_attention_forward<T>(T*, T*, const T*, const T*, const T*, const T*,         \
                                           const T*, const T*, const uint8_t*, int64_t, int64_t,   \
                                           int64_t, int64_t, int64_t, int64_t);                    \
    template void rel_attention_backward<T>(T*, T*, T*, T*, T*, T*, const T*, const T*, const T*,  \
                                            const T*, const T*, const T*, const T*, const T*,      \
                                            int64_t, int64_t, int64_t, int64_t, int64_t, bool);    \
    template void rel_position_encoding<T>(T*, int64_t, int64_t, int64_t);

RMT_INSTANTIATE(float)
RMT_INSTANTIATE(double)
#undef RMT_INSTANTIATE

}  // namespace rmt::ops
