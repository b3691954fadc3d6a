// Compiled with -mavx2 -mfma (CMakeLists.txt): only the kernel table lives here.
#include "kernels/fma_peak.hpp"
#include "kernels/gemm_kernels.hpp"
#include "kernels/vector_kernels.hpp"

namespace rmt::kernels {

const KernelTable& avx2_table() {
    using arch = xsimd::fma3<xsimd::avx2>;
    static const KernelTable table{
        "avx2",
        // 6 x 16 floats: 12 of 16 ymm as accumulators. K slices of 512: the 16 x 512 B
        // micro-panel (32 KiB) streams through L1 and the 96 x 512 A block (192 KiB) sits in
        // L2; against slices of 256 and blocks of 144 this cut the C-tile reloads of long K
        // in half and measured 10-20% faster on the models' linear shapes (AMD EPYC, Zen 3).
        simd::make_gemm_micro<arch, float, 6, 2>(512, 96),
        simd::make_gemm_micro<arch, double, 6, 2>(),   // 6 x 8 doubles
        simd::make_vector_kernels<arch, float>(),
        simd::make_vector_kernels<arch, double>(),
        &simd::fma_peak_f32<arch, 12>,                 // 12 of 16 ymm: covers latency x 2 ports
    };
    return table;
}

}  // namespace rmt::kernels
