// Compiled with -mavx512f -mavx512dq -mavx512bw -mavx512vl (CMakeLists.txt): only the kernel
// table lives here.
#include "kernels/fma_peak.hpp"
#include "kernels/gemm_kernels.hpp"
#include "kernels/vector_kernels.hpp"

namespace rmt::kernels {

const KernelTable& avx512_table() {
    using arch = xsimd::avx512bw;
    static const KernelTable table{
        "avx512",
        simd::make_gemm_micro<arch, float, 8, 2>(),    // 8 x 32 floats: 16 of 32 zmm as accumulators
        simd::make_gemm_micro<arch, double, 8, 2>(),   // 8 x 16 doubles
        simd::make_vector_kernels<arch, float>(),
        simd::make_vector_kernels<arch, double>(),
        &simd::fma_peak_f32<arch, 16>,                 // 16 zmm chains: 4-cycle latency x 2 ports x 2
    };
    return table;
}

}  // namespace rmt::kernels
