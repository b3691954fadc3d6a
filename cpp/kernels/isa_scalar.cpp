#include "kernels/fma_peak.hpp"
#include "kernels/gemm_kernels.hpp"
#include "kernels/isa.hpp"
#include "kernels/vector_reference.hpp"

namespace rmt::kernels {

template <typename T>
static VectorKernels<T> reference_vector_kernels() {
    return VectorKernels<T>{&reference::dot<T>, &reference::axpy<T>, &reference::max<T>,
                            &reference::exp_shift_sum<T>, &reference::scale<T>, &reference::adamw<T>,
                            &reference::gelu<T>, &reference::gelu_backward<T>,
                            &reference::small_gemm<T>, &reference::softmax_rows<T>,
                            &reference::layernorm_rows<T>, &reference::layernorm_row_backward<T>,
                            &reference::relu_backward<T>, &reference::transpose<T>,
                            &reference::add_rows<T>, &reference::add_bias_rows<T>};
}

const KernelTable& scalar_table() {
    static const KernelTable table{
        "scalar",
        GemmMicroKernel<float>{4, 4, &reference::gemm_micro<float, 4, 4>},
        GemmMicroKernel<double>{4, 4, &reference::gemm_micro<double, 4, 4>},
        reference_vector_kernels<float>(),
        reference_vector_kernels<double>(),
        &reference::fma_peak_f32<16>,
    };
    return table;
}

}  // namespace rmt::kernels
