// Bindings of the dense ops: embedding and linear.
#include <cmath>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "ops/embedding.hpp"
#include "ops/linear.hpp"

namespace rmt::bindings {
namespace {

std::vector<int64_t> shape_of(const py::array& a) {
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

template <typename T>
py::array_t<T> embedding_forward(py::handle ids_obj, py::handle table_obj, py::object scale_obj) {
    auto table = checked<T>(table_obj, "table", 2);
    const int64_t V = dim(table, 0), C = dim(table, 1);
    auto ids = checked_ids(ids_obj, "ids", V);
    const T scale = scale_obj.is_none() ? T(std::sqrt(double(C))) : scale_obj.cast<T>();
    auto out_shape = shape_of(ids);
    out_shape.push_back(C);
    auto out = new_array<T>(out_shape, false);
    T* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        ops::embedding_forward<T>(o, ids.data(), table.data(), ids.size(), V, C, scale);
    }
    return out;
}

template <typename T>
py::array_t<T> embedding_backward(py::handle dout_obj, py::handle ids_obj, int64_t vocab_size,
                                  py::object scale_obj) {
    if (vocab_size < 1) throw py::value_error("vocab_size must be >= 1");
    auto ids = checked_ids(ids_obj, "ids", vocab_size);
    auto want = shape_of(ids);
    want.push_back(-1);
    auto dout = checked<T>(dout_obj, "dout", int(want.size()), want);
    const int64_t C = dim(dout, want.size() - 1);
    const T scale = scale_obj.is_none() ? T(std::sqrt(double(C))) : scale_obj.cast<T>();
    auto dtable = new_array<T>({vocab_size, C});
    T* d = dtable.mutable_data();
    {
        py::gil_scoped_release release;
        ops::embedding_backward<T>(d, dout.data(), ids.data(), ids.size(), vocab_size, C, scale);
    }
    return dtable;
}

template <typename T>
py::array_t<T> linear_forward(py::handle x_obj, py::handle w_obj, py::handle b_obj, bool relu) {
    auto w = checked<T>(w_obj, "weight", 2);
    const int64_t OC = dim(w, 0), IC = dim(w, 1);
    auto x = checked<T>(x_obj, "x", -1);
    if (dim(x, x.dimension() - 1) != IC)
        throw py::value_error("x has last dimension " + std::to_string(dim(x, x.dimension() - 1)) +
                              ", weight expects in_features = " + std::to_string(IC));
    const T* bias = nullptr;
    if (!b_obj.is_none()) bias = checked<T>(b_obj, "bias", 1, {OC}).data();
    auto out_shape = shape_of(py::reinterpret_borrow<py::array>(x_obj));
    out_shape.back() = OC;
    auto out = new_array<T>(out_shape, false);
    T* o = out.mutable_data();
    const int64_t N = int64_t(x.size()) / IC;
    {
        py::gil_scoped_release release;
        ops::linear_forward<T>(o, x.data(), w.data(), bias, N, IC, OC, relu);
    }
    return out;
}

template <typename T>
py::tuple linear_backward(py::handle dout_obj, py::handle x_obj, py::handle w_obj, bool bias,
                          bool overwrite_dx) {
    auto w = checked<T>(w_obj, "weight", 2);
    const int64_t OC = dim(w, 0), IC = dim(w, 1);
    auto x = checked<T>(x_obj, "x", -1);
    auto x_shape = shape_of(py::reinterpret_borrow<py::array>(x_obj));
    if (x_shape.back() != IC)
        throw py::value_error("x has last dimension " + std::to_string(x_shape.back()) +
                              ", weight expects in_features = " + std::to_string(IC));
    auto dout_shape = x_shape;
    dout_shape.back() = OC;
    auto dout = checked<T>(dout_obj, "dout", int(dout_shape.size()), dout_shape);
    auto dx = gradient_array<T>(x_shape, overwrite_dx);
    auto dw = new_array<T>({OC, IC});
    py::object db = py::none();
    T* dbias = nullptr;
    if (bias) {
        auto db_arr = new_array<T>({OC});
        dbias = db_arr.mutable_data();
        db = db_arr;
    }
    T* dxp = dx.mutable_data();
    T* dwp = dw.mutable_data();
    const int64_t N = int64_t(x.size()) / IC;
    {
        py::gil_scoped_release release;
        ops::linear_backward<T>(dxp, dwp, dbias, dout.data(), x.data(), w.data(), N, IC, OC,
                                overwrite_dx);
    }
    return py::make_tuple(dx, dw, db);
}

}  // namespace

void register_ops_dense(py::module_& ops) {
    ops.def("embedding_forward", [](py::handle ids, py::handle table, py::object scale) -> py::array {
        return dispatch_float(table, "table", [&](auto tag) -> py::array {
            return embedding_forward<decltype(tag)>(ids, table, scale);
        });
    }, py::arg("ids"), py::arg("table"), py::arg("scale") = py::none(),
       "out[..., C] = table[ids] * scale (scale defaults to sqrt(C), as in Transformer-XL).");
    ops.def("embedding_backward", [](py::handle dout, py::handle ids, int64_t vocab_size, py::object scale) -> py::array {
        return dispatch_float(dout, "dout", [&](auto tag) -> py::array {
            return embedding_backward<decltype(tag)>(dout, ids, vocab_size, scale);
        });
    }, py::arg("dout"), py::arg("ids"), py::arg("vocab_size"), py::arg("scale") = py::none(),
       "dtable (vocab_size, C): dout scattered to the rows of ids, times scale.");
    ops.def("linear_forward", [](py::handle x, py::handle weight, py::handle bias,
                                 bool relu) -> py::array {
        return dispatch_float(x, "x", [&](auto tag) -> py::array {
            return linear_forward<decltype(tag)>(x, weight, bias, relu);
        });
    }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("relu") = false,
       "y = x @ weight.T + bias; weight (out_features, in_features), x (..., in_features). "
       "relu=True: y = relu(x @ weight.T + bias) in the same pass (the feed-forward fc1 of the "
       "ReLU models).");
    ops.def("linear_backward", [](py::handle dout, py::handle x, py::handle weight, bool bias,
                                  bool overwrite_dx) -> py::tuple {
        return dispatch_float(x, "x", [&](auto tag) -> py::tuple {
            return linear_backward<decltype(tag)>(dout, x, weight, bias, overwrite_dx);
        });
    }, py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("bias") = true,
       py::arg("overwrite_dx") = false,
       "(dx, dweight, dbias) of y = x @ weight.T + bias (dbias is None when bias=False). "
       "overwrite_dx: dx is written over a NaN-filled buffer instead of accumulated into zeros "
       "(the engine's path for fresh buffers; the result is the same).");
}

}  // namespace rmt::bindings
