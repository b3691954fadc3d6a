#include "bindings/register.hpp"

PYBIND11_MODULE(_core, core) {
    core.doc() = "rmt's C++ core: kernels, ops, models and trainers";
    rmt::bindings::register_runtime(core);
    auto kernels = core.def_submodule(
        "kernels", "The vector kernels of the active ISA (or their scalar references), for tests");
    rmt::bindings::register_kernels(kernels);
    auto ops = core.def_submodule(
        "ops", "Forward/backward pairs of every op, on numpy arrays (float32 or float64)");
    rmt::bindings::register_ops_dense(ops);
    rmt::bindings::register_ops_elementwise(ops);
    rmt::bindings::register_ops_attention(ops);
    rmt::bindings::register_ops_loss_optim(ops);
    rmt::bindings::register_segments(core);
#ifdef RMT_WITH_MODELS
    rmt::bindings::register_model(core);
    rmt::bindings::register_training(core);
#endif
}
