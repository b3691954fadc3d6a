// Bindings of the elementwise ops: layer norm, ReLU, GELU, dropout.
#include <algorithm>
#include <cmath>
#include <string>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "ops/activation.hpp"
#include "ops/dropout.hpp"
#include "ops/layernorm.hpp"

namespace rmt::bindings {
namespace {

std::vector<int64_t> shape_of(py::handle obj) {
    auto a = py::reinterpret_borrow<py::array>(obj);
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

bool tanh_approximation(const std::string& approximate) {
    if (approximate == "none") return false;
    if (approximate == "tanh") return true;
    throw py::value_error("approximate must be 'none' or 'tanh', got '" + approximate + "'");
}

void check_dropout_p(double p) {
    if (!(p >= 0.0 && p < 1.0))
        throw py::value_error("dropout p must be in [0, 1), got " + std::to_string(p));
}

// The keep mask: uint8 (or bool) of the given shape, C-contiguous.
const uint8_t* checked_mask(py::handle obj, const char* name, const std::vector<int64_t>& shape) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<uint8_t>()) && !arr.dtype().is(py::dtype::of<bool>()))
        throw py::type_error(std::string(name) + " must have dtype uint8 or bool, got " +
                             std::string(py::str(arr.dtype())));
    const auto got = shape_of(obj);
    if (got != shape)
        throw py::value_error(std::string(name) + " has shape " + shape_string(got) + ", expected " +
                              shape_string(shape));
    if (!(arr.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
    return static_cast<const uint8_t*>(arr.data());
}

template <typename T>
py::tuple layernorm_forward(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
    if (!(eps >= 0.0) || !std::isfinite(eps))
        throw py::value_error("eps must be finite and >= 0, got " + std::to_string(eps));
    auto x = checked<T>(x_obj, "x", -1);
    auto shape = shape_of(x_obj);
    const int64_t C = shape.back(), N = int64_t(x.size()) / C;
    auto w = checked<T>(w_obj, "weight", 1, {C});
    auto b = checked<T>(b_obj, "bias", 1, {C});
    auto out = new_array<T>(shape, false);
    std::vector<int64_t> row_shape(shape.begin(), shape.end() - 1);
    auto mean = new_array<T>(row_shape, false);
    auto rstd = new_array<T>(row_shape, false);
    T *o = out.mutable_data(), *mp = mean.mutable_data(), *rp = rstd.mutable_data();
    {
        py::gil_scoped_release release;
        ops::layernorm_forward<T>(o, mp, rp, x.data(), w.data(), b.data(), N, C, T(eps));
    }
    return py::make_tuple(out, mean, rstd);
}

template <typename T>
py::tuple layernorm_backward(py::handle dout_obj, py::handle x_obj, py::handle w_obj,
                             py::handle mean_obj, py::handle rstd_obj, bool overwrite) {
    auto x = checked<T>(x_obj, "x", -1);
    auto shape = shape_of(x_obj);
    const int64_t C = shape.back(), N = int64_t(x.size()) / C;
    std::vector<int64_t> row_shape(shape.begin(), shape.end() - 1);
    auto dout = checked<T>(dout_obj, "dout", int(shape.size()), shape);
    auto w = checked<T>(w_obj, "weight", 1, {C});
    auto mean = checked<T>(mean_obj, "mean", int(row_shape.size()), row_shape);
    auto rstd = checked<T>(rstd_obj, "rstd", int(row_shape.size()), row_shape);
    auto dx = gradient_array<T>(shape, overwrite);
    auto dw = new_array<T>({C});
    auto db = new_array<T>({C});
    T *dxp = dx.mutable_data(), *dwp = dw.mutable_data(), *dbp = db.mutable_data();
    {
        py::gil_scoped_release release;
        ops::layernorm_backward<T>(dxp, dwp, dbp, dout.data(), x.data(), w.data(), mean.data(),
                                   rstd.data(), N, C, overwrite);
    }
    return py::make_tuple(dx, dw, db);
}

template <typename T>
py::array_t<T> relu_forward(py::handle x_obj) {
    auto x = checked<T>(x_obj, "x", -1);
    auto out = new_array<T>(shape_of(x_obj), false);
    T* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        ops::relu_forward<T>(o, x.data(), int64_t(x.size()));
    }
    return out;
}

template <typename T>
py::array_t<T> relu_backward(py::handle dout_obj, py::handle x_obj, bool overwrite) {
    auto x = checked<T>(x_obj, "x", -1);
    auto shape = shape_of(x_obj);
    auto dout = checked<T>(dout_obj, "dout", int(shape.size()), shape);
    auto dx = gradient_array<T>(shape, overwrite);
    T* d = dx.mutable_data();
    {
        py::gil_scoped_release release;
        ops::relu_backward<T>(d, dout.data(), x.data(), int64_t(x.size()), overwrite);
    }
    return dx;
}

// y + x as a new array (the op adds in place: the residual connections).
template <typename T>
py::array_t<T> residual_add(py::handle y_obj, py::handle x_obj) {
    auto y = checked<T>(y_obj, "y", -1);
    auto shape = shape_of(y_obj);
    auto x = checked<T>(x_obj, "x", int(shape.size()), shape);
    auto out = new_array<T>(shape, false);
    T* o = out.mutable_data();
    std::copy(y.data(), y.data() + y.size(), o);
    {
        py::gil_scoped_release release;
        ops::add_inplace<T>(o, x.data(), int64_t(x.size()));
    }
    return out;
}

template <typename T>
py::array_t<T> gelu_forward(py::handle x_obj, bool tanh_approx) {
    auto x = checked<T>(x_obj, "x", -1);
    auto out = new_array<T>(shape_of(x_obj), false);
    T* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        ops::gelu_forward<T>(o, x.data(), int64_t(x.size()), tanh_approx);
    }
    return out;
}

template <typename T>
py::array_t<T> gelu_backward(py::handle dout_obj, py::handle x_obj, bool tanh_approx,
                             bool overwrite) {
    auto x = checked<T>(x_obj, "x", -1);
    auto shape = shape_of(x_obj);
    auto dout = checked<T>(dout_obj, "dout", int(shape.size()), shape);
    auto dx = gradient_array<T>(shape, overwrite);
    T* d = dx.mutable_data();
    {
        py::gil_scoped_release release;
        ops::gelu_backward<T>(d, dout.data(), x.data(), int64_t(x.size()), tanh_approx, overwrite);
    }
    return dx;
}

template <typename T>
py::tuple dropout_forward(py::handle x_obj, double p, uint64_t seed, uint64_t offset) {
    check_dropout_p(p);
    auto x = checked<T>(x_obj, "x", -1);
    auto shape = shape_of(x_obj);
    auto out = new_array<T>(shape, false);
    auto keep = new_array<uint8_t>(shape, false);
    T* o = out.mutable_data();
    uint8_t* k = keep.mutable_data();
    {
        py::gil_scoped_release release;
        ops::dropout_forward<T>(o, k, x.data(), int64_t(x.size()), T(p), seed, offset);
    }
    return py::make_tuple(out, keep);
}

template <typename T>
py::array_t<T> dropout_backward(py::handle dout_obj, py::handle keep_obj, double p) {
    check_dropout_p(p);
    auto dout = checked<T>(dout_obj, "dout", -1);
    auto shape = shape_of(dout_obj);
    const uint8_t* keep = checked_mask(keep_obj, "keep", shape);
    auto dx = new_array<T>(shape);
    T* d = dx.mutable_data();
    {
        py::gil_scoped_release release;
        ops::dropout_backward<T>(d, dout.data(), keep, int64_t(dout.size()), T(p));
    }
    return dx;
}

}  // namespace

void register_ops_elementwise(py::module_& ops) {
    ops.def("layernorm_forward", [](py::handle x, py::handle weight, py::handle bias, double eps) -> py::tuple {
        return dispatch_float(x, "x", [&](auto tag) -> py::tuple {
            return layernorm_forward<decltype(tag)>(x, weight, bias, eps);
        });
    }, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps") = 1e-5,
       "(out, mean, rstd): layer norm over the last dimension of x (..., C), biased variance.");
    ops.def("layernorm_backward", [](py::handle dout, py::handle x, py::handle weight, py::handle mean, py::handle rstd, bool overwrite) -> py::tuple {
        return dispatch_float(x, "x", [&](auto tag) -> py::tuple {
            return layernorm_backward<decltype(tag)>(dout, x, weight, mean, rstd, overwrite);
        });
    }, py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
       py::arg("overwrite") = false,
       "(dx, dweight, dbias) of layernorm_forward, from its saved mean and rstd. overwrite: dx "
       "is written over NaN instead of accumulated into zeros (the engine's path for fresh "
       "buffers; the result is the same).");
    ops.def("relu_forward", [](py::handle x) -> py::array {
        return dispatch_float(x, "x", [&](auto tag) -> py::array { return relu_forward<decltype(tag)>(x); });
    }, py::arg("x"), "max(x, 0).");
    ops.def("relu_backward", [](py::handle dout, py::handle x, bool overwrite) -> py::array {
        return dispatch_float(x, "x", [&](auto tag) -> py::array {
            return relu_backward<decltype(tag)>(dout, x, overwrite);
        });
    }, py::arg("dout"), py::arg("x"), py::arg("overwrite") = false,
       "dx = dout * (x > 0). overwrite: as layernorm_backward's.");
    ops.def("residual_add", [](py::handle y, py::handle x) -> py::array {
        return dispatch_float(y, "y", [&](auto tag) -> py::array {
            return residual_add<decltype(tag)>(y, x);
        });
    }, py::arg("y"), py::arg("x"),
       "y + x, as the layer's residual connections add (ops::add_inplace, split between the "
       "threads from 64 K elements).");
    ops.def("gelu_forward", [](py::handle x, const std::string& approximate) -> py::array {
        const bool t = tanh_approximation(approximate);
        return dispatch_float(x, "x", [&](auto tag) -> py::array { return gelu_forward<decltype(tag)>(x, t); });
    }, py::arg("x"), py::arg("approximate") = "none",
       "GELU, exact (erf) or approximate='tanh' as torch.nn.functional.gelu.");
    ops.def("gelu_backward", [](py::handle dout, py::handle x, const std::string& approximate,
                                bool overwrite) -> py::array {
        const bool t = tanh_approximation(approximate);
        return dispatch_float(x, "x", [&](auto tag) -> py::array {
            return gelu_backward<decltype(tag)>(dout, x, t, overwrite);
        });
    }, py::arg("dout"), py::arg("x"), py::arg("approximate") = "none",
       py::arg("overwrite") = false,
       "dx = dout * gelu'(x). overwrite: as layernorm_backward's.");
    ops.def("dropout_forward", [](py::handle x, double p, uint64_t seed, uint64_t offset) -> py::tuple {
        return dispatch_float(x, "x", [&](auto tag) -> py::tuple {
            return dropout_forward<decltype(tag)>(x, p, seed, offset);
        });
    }, py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
       "(out, keep): inverted dropout; flat element i is kept iff "
       "uniform(hash(seed, offset + i)) >= p, whatever the thread count.");
    ops.def("dropout_backward", [](py::handle dout, py::handle keep, double p) -> py::array {
        return dispatch_float(dout, "dout", [&](auto tag) -> py::array {
            return dropout_backward<decltype(tag)>(dout, keep, p);
        });
    }, py::arg("dout"), py::arg("keep"), py::arg("p"), "dx = dout * keep / (1 - p).");
}

}  // namespace rmt::bindings
