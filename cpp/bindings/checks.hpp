// Argument checks at the Python boundary. Every array that crosses into the core is checked
// here: its type, dtype, rank, shape, contiguity and emptiness, with a Python exception that
// names the argument. Past this point the C++ core trusts its inputs.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>
#include <xtensor/xadapt.hpp>

namespace rmt::bindings {
namespace py = pybind11;

// A numpy buffer seen through xtensor without a copy.
template <typename T>
using NumpyView = decltype(xt::adapt(static_cast<T*>(nullptr), size_t(0), xt::no_ownership(),
                                     std::vector<size_t>{}));

template <typename T>
const char* dtype_name() {
    if constexpr (std::is_same_v<T, float>) return "float32";
    else if constexpr (std::is_same_v<T, double>) return "float64";
    else if constexpr (std::is_same_v<T, int32_t>) return "int32";
    else if constexpr (std::is_same_v<T, int64_t>) return "int64";
    else return "bool";
}

std::string shape_string(const std::vector<int64_t>& shape);

// Checks `obj` is a C-contiguous, non-empty numpy array of dtype T and rank ndim (ndim = -1: any
// rank >= 1), then returns an
// xtensor view of it. `expected` may give the exact shape (-1 = any size in that dimension).
template <typename T>
NumpyView<T> checked(py::handle obj, const char* name, int ndim, std::vector<int64_t> expected = {},
                     bool allow_empty = false) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                             std::string(py::str(arr.dtype())));
    if (ndim < 0 ? arr.ndim() < 1 : arr.ndim() != ndim)
        throw py::value_error(std::string(name) + " must have " + (ndim < 0 ? std::string("at least 1") : std::to_string(ndim)) +
                              " dimensions, got shape " +
                              shape_string(std::vector<int64_t>(arr.shape(), arr.shape() + arr.ndim())));
    std::vector<size_t> shape(arr.shape(), arr.shape() + arr.ndim());
    std::vector<int64_t> shape64(arr.shape(), arr.shape() + arr.ndim());
    for (size_t d = 0; d < expected.size(); ++d)
        if (expected[d] >= 0 && shape64[d] != expected[d]) {
            std::vector<int64_t> want = expected;
            throw py::value_error(std::string(name) + " has shape " + shape_string(shape64) +
                                  ", expected " + shape_string(want) + " (-1 = any)");
        }
    if (!allow_empty && arr.size() == 0)
        throw py::value_error(std::string(name) + " is empty (shape " + shape_string(shape64) + ")");
    if (!(arr.flags() & py::array::c_style))
        throw py::value_error(std::string(name) +
                              " must be C-contiguous (use numpy.ascontiguousarray)");
    return xt::adapt(static_cast<T*>(const_cast<void*>(arr.data())), size_t(arr.size()),
                     xt::no_ownership(), shape);
}

// For arrays the op writes into (optimizer state, gradients clipped in place).
template <typename T>
NumpyView<T> checked_writeable(py::handle obj, const char* name, int ndim,
                               std::vector<int64_t> expected = {}) {
    auto view = checked<T>(obj, name, ndim, std::move(expected));
    if (!py::reinterpret_borrow<py::array>(obj).writeable())
        throw py::value_error(std::string(name) + " must be writeable (it is updated in place)");
    return view;
}

template <class View>
int64_t dim(const View& v, size_t d) { return int64_t(v.shape()[d]); }

// Token ids of any integer dtype, range-checked against [0, vocab) (or equal to `allowed`), as a
// C-contiguous int32 array (a copy only if the input was not int32 already).
py::array_t<int32_t> checked_ids(py::handle obj, const char* name, int64_t vocab,
                                 bool has_allowed = false, int64_t allowed = 0);

// Raises ValueError naming `name` if any value is NaN or infinite.
template <class View>
void check_finite(const View& v, const char* name) {
    const auto* p = v.data();
    for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(p[i]))
            throw py::value_error(std::string(name) + " contains NaN or Inf (at flat index " +
                                  std::to_string(i) + ")");
}

// Token ids must lie in [0, vocab) (or equal `allowed`, e.g. an ignore index).
void check_ids(const NumpyView<int32_t>& ids, const char* name, int64_t vocab,
               bool has_allowed = false, int64_t allowed = 0);

// The floating dtype of a (float) array argument: 'f' for float32, 'd' for float64.
char float_kind(py::handle obj, const char* name);

// A new C-contiguous array of the given shape (zero-filled when zero = true).
template <typename T>
py::array_t<T> new_array(const std::vector<int64_t>& shape, bool zero = true) {
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    py::array_t<T> a(s);
    if (zero) std::fill(a.mutable_data(), a.mutable_data() + a.size(), T(0));
    return a;
}

// The input gradient a backward op fills: zeros that it accumulates into, or, when the op is
// asked to overwrite (the engine's path for fresh buffers), NaN, which must never be read.
template <typename T>
py::array_t<T> gradient_array(const std::vector<int64_t>& shape, bool overwrite) {
    py::array_t<T> a = new_array<T>(shape, !overwrite);
    if (overwrite)
        std::fill(a.mutable_data(), a.mutable_data() + a.size(),
                  std::numeric_limits<T>::quiet_NaN());
    return a;
}

// Calls fn.template operator()<float>() or <double>() by the dtype of `obj`.
template <typename Fn>
auto dispatch_float(py::handle obj, const char* name, Fn&& fn) {
    if (float_kind(obj, name) == 'f') return fn(float{});
    return fn(double{});
}

}  // namespace rmt::bindings
