// Run-time dispatch between the instruction sets one build carries.
//
// Every SIMD kernel is written once against xsimd (vector_kernels.hpp, gemm_kernels.hpp) and
// compiled in one translation unit per ISA (isa_avx512.cpp, isa_avx2.cpp). Each of those fills a
// KernelTable of function pointers; the scalar table holds the plain reference kernels. The
// active table is chosen at start-up from what the CPU reports and can be forced (tests run
// every op on every ISA the CPU has and compare).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rmt::kernels {

// Vector kernels over contiguous arrays. n may be anything (tails handled).
template <typename T>
struct VectorKernels {
    T (*dot)(const T* x, const T* y, int64_t n);
    void (*axpy)(T a, const T* x, T* y, int64_t n);          // y += a * x
    T (*max)(const T* x, int64_t n);                          // n >= 1
    T (*exp_shift_sum)(T* x, T shift, int64_t n);             // x = exp(x - shift); returns sum(x)
    void (*scale)(T* x, T a, int64_t n);                      // x *= a
    // One AdamW step over a flat buffer (bias corrections folded into lr_t and the eps term).
    void (*adamw)(T* param, const T* grad, T* m, T* v, int64_t n, T lr, T beta1, T beta2,
                  T eps, T weight_decay_factor, T bias_correction1, T bias_correction2_sqrt);
    void (*gelu)(T* out, const T* inp, int64_t n, bool tanh_approximation);
    // dinp += dout * gelu'(inp)
    void (*gelu_backward)(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation);
    // C (M x N) = alpha * A B (K x N) (+ C with accumulate), row-major, unpacked: for tiny
    // products. A(i, k) = A[i * a_rs + k * a_cs], so A may be a transposed view. Fastest when N
    // is a multiple of pad_elements<T>().
    void (*small_gemm)(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_rs,
                       int64_t a_cs, const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate);
    // rows x n (n >= 1): out row r (row stride ld_out) = softmax of in row r (ld_in); out may
    // be in (the same rows and stride).
    void (*softmax_rows)(T* out, int64_t ld_out, const T* in, int64_t ld_in, int64_t rows,
                         int64_t n);
    // LayerNorm of rows x n (n >= 1, row stride n; mean and rstd one per row; out may be x)
    // and the input gradient of one row (accumulated into dx).
    void (*layernorm_rows)(T* out, const T* x, const T* weight, const T* bias, int64_t rows,
                           int64_t n, T eps, T* mean, T* rstd);
    void (*layernorm_row_backward)(T* dx, const T* dy, const T* x, const T* weight, T mean,
                                   T rstd, int64_t n);
    void (*relu_backward)(T* dinp, const T* dout, const T* inp, int64_t n);   // dinp += ...
    // dst (cols x rows, row stride ld_dst) = src (rows x cols, row stride ld_src) transposed;
    // dst and src do not overlap. The attention's key (and position key) transposes.
    void (*transpose)(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows,
                      int64_t cols);
    // y (rows x cols, row stride ldy) += x (rows x cols, ldx), and sums (cols), when not null,
    // += x's column sums, added a row at a time in row order (y null: the sums alone). The
    // attention's gradient accumulation into strided head slices and its column sums.
    void (*add_rows)(T* y, int64_t ldy, const T* x, int64_t ldx, int64_t rows, int64_t cols,
                     T* sums);
    // out (rows x cols, ld_out) = x (rows x cols, ldx) + bias (cols) on every row: q + u and
    // q + v of the relative attention, from strided head slices. out and x do not overlap.
    void (*add_bias_rows)(T* out, int64_t ld_out, const T* x, int64_t ldx, const T* bias,
                          int64_t rows, int64_t cols);
};

// Elements in 64 bytes: a multiple of every ISA's vector width, the padding unit for small_gemm.
template <typename T>
constexpr int64_t pad_elements() { return int64_t(64 / sizeof(T)); }

// The GEMM micro-kernel: C[0:m, 0:n] = alpha * A * Bpanel + beta * C for one MR x NR tile.
// A(r, p) = a[r * a_rs + p * a_cs] for all MR rows: a packed panel, MR-interleaved (a_rs = 1,
// a_cs = MR, zero rows past m), or MR whole rows of a row-major matrix read in place (a_rs = lda,
// a_cs = 1). Bpanel is packed NR-interleaved (kc rows of NR values). m <= MR and n <= NR describe
// a partial edge tile. beta == 0 overwrites C (never reads it, so NaN garbage in C does not leak).
// bias, when not nullptr, holds the tile's NR column biases (n of them meaningful), added to every
// row as the tile is stored; relu then stores max(result, 0) instead (NaN -> 0). The kernel
// prefetches the m x n part of C it stores (for writing) before its k loop.
//
// kc and mc are the cache blocking that goes with the tile (kernels/gemm.cpp): the K slice and the
// rows of op(A) packed per block. The NR x kc micro-panel of B should stay in L1 and the mc x kc
// block of A in L2; mc is a multiple of mr.
template <typename T>
struct GemmMicroKernel {
    int mr = 0;
    int nr = 0;
    // relu: store max(result, 0) (NaN -> 0, as ops::relu_forward), for the last K slice of a
    // product whose ReLU the GEMM applies itself
    void (*run)(int64_t kc, const T* a, int64_t a_rs, int64_t a_cs, const T* b_panel, T* c,
                int64_t ldc, T alpha, T beta, int m, int n, const T* bias, bool relu) = nullptr;
    int64_t kc = 256;
    int64_t mc = 144;
};

struct KernelTable {
    const char* name;
    GemmMicroKernel<float> gemm_f32;
    GemmMicroKernel<double> gemm_f64;
    VectorKernels<float> vec_f32;
    VectorKernels<double> vec_f64;
    // FMA-peak micro-benchmark (fma_peak.hpp): runs `iterations` rounds of independent float32
    // FMAs in registers only and returns the number of flops done.
    double (*fma_peak_f32)(int64_t iterations);
};

// Per-ISA tables (each defined in its own translation unit).
const KernelTable& scalar_table();
const KernelTable& avx2_table();
const KernelTable& avx512_table();

// The active table and its selection.
const KernelTable& active();
std::vector<std::string> available_isas();   // best first; "scalar" always present
std::string current_isa();
void set_isa(const std::string& name);       // throws std::invalid_argument if not available

// Measured float32 FMA peak in GFLOP/s of `threads` threads running the active table's
// fma_peak_f32 at once (best of 5 timed runs after a warm-up, about `seconds` in all).
double fma_peak_gflops(int threads, double seconds);

template <typename T> const VectorKernels<T>& vec();
template <> inline const VectorKernels<float>& vec<float>() { return active().vec_f32; }
template <> inline const VectorKernels<double>& vec<double>() { return active().vec_f64; }

template <typename T> const GemmMicroKernel<T>& gemm_micro();
template <> inline const GemmMicroKernel<float>& gemm_micro<float>() { return active().gemm_f32; }
template <> inline const GemmMicroKernel<double>& gemm_micro<double>() { return active().gemm_f64; }

}  // namespace rmt::kernels
