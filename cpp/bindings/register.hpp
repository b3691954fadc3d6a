// Each group of bindings registers itself into the `_core` module (module.cpp calls them all).
#pragma once
#include <pybind11/pybind11.h>

namespace rmt::bindings {
namespace py = pybind11;

void register_runtime(py::module_& core);           // threads, ISA selection, gemm, peak
void register_kernels(py::module_& kernels);      // vector kernels vs their references
void register_ops_dense(py::module_& ops);          // embedding, linear
void register_ops_elementwise(py::module_& ops);    // layer norm, relu, gelu, dropout
void register_ops_attention(py::module_& ops);      // softmax, masks, attention, rel. attention
void register_ops_loss_optim(py::module_& ops);     // cross-entropy, adam(w), clipping
void register_model(py::module_& core);             // the model kinds
void register_training(py::module_& core);          // the C++ training step
void register_segments(py::module_& core);          // segment iterators over token batches

}  // namespace rmt::bindings
