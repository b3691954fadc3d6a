// `_core.kernels`: the vector kernels of the active ISA (or, with reference=True, their scalar
// references) on 1-D numpy arrays, so tests can compare every ISA against the plain loops.
// Inputs are never modified: in-place kernels run on copies that are returned.
#include <type_traits>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "kernels/isa.hpp"

namespace rmt::bindings {
namespace {

template <typename T>
const kernels::VectorKernels<T>& table(bool reference) {
    const kernels::KernelTable& t = reference ? kernels::scalar_table() : kernels::active();
    if constexpr (std::is_same_v<T, float>) return t.vec_f32;
    else return t.vec_f64;
}

// A 1-D array of dtype T, empty allowed, with its length checked against n (n < 0: any).
template <typename T>
NumpyView<T> vec_arg(py::handle obj, const char* name, int64_t n = -1) {
    return checked<T>(obj, name, 1, {n}, /*allow_empty=*/true);
}

template <typename T>
py::array_t<T> copy_of(const NumpyView<T>& v) {
    auto out = new_array<T>({int64_t(v.size())}, false);
    std::copy(v.data(), v.data() + v.size(), out.mutable_data());
    return out;
}

// A 2-D array of dtype T (rows x ldx, empty allowed) whose first `cols` columns a row kernel
// reads: cols in [0, ldx].
template <typename T>
NumpyView<T> rows_arg(py::handle x, int64_t cols) {
    auto X = checked<T>(x, "x", 2, {-1, -1}, /*allow_empty=*/true);
    if (cols < 0 || cols > int64_t(X.shape()[1]))
        throw py::value_error("cols must be in [0, x.shape[1]], got " + std::to_string(cols));
    return X;
}

// dinp + an activation's gradient, on a copy of dinp (dinp, dout, x: 1-D, one length):
// call(out, dout, x, n) runs the kernel, with T deduced from its pointers.
template <class Call>
py::object backward_on_copy(py::handle dinp, py::handle dout, py::handle x, Call call) {
    return dispatch_float(x, "x", [&](auto tag) -> py::object {
        using T = decltype(tag);
        auto X = vec_arg<T>(x, "x");
        const int64_t n = int64_t(X.size());
        auto D = vec_arg<T>(dout, "dout", n);
        auto out = copy_of<T>(vec_arg<T>(dinp, "dinp", n));
        T* o = out.mutable_data();
        {
            py::gil_scoped_release release;
            call(o, D.data(), X.data(), n);
        }
        return std::move(out);
    });
}

}  // namespace

void register_kernels(py::module_& m) {
    const auto ref = py::arg("reference") = false;

    m.def("vec_dot", [](py::handle x, py::handle y, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = vec_arg<T>(x, "x");
            auto Y = vec_arg<T>(y, "y", int64_t(X.size()));
            T r;
            {
                py::gil_scoped_release release;
                r = table<T>(reference).dot(X.data(), Y.data(), int64_t(X.size()));
            }
            return py::float_(double(r));
        });
    }, py::arg("x"), py::arg("y"), ref, "sum(x * y)");

    m.def("vec_axpy", [](double a, py::handle x, py::handle y, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = vec_arg<T>(x, "x");
            auto out = copy_of<T>(vec_arg<T>(y, "y", int64_t(X.size())));
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).axpy(T(a), X.data(), o, int64_t(X.size()));
            }
            return std::move(out);
        });
    }, py::arg("a"), py::arg("x"), py::arg("y"), ref, "Returns y + a * x (y is not modified).");

    m.def("vec_max", [](py::handle x, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = checked<T>(x, "x", 1);   // max of nothing is undefined: non-empty
            T r;
            {
                py::gil_scoped_release release;
                r = table<T>(reference).max(X.data(), int64_t(X.size()));
            }
            return py::float_(double(r));
        });
    }, py::arg("x"), ref, "max(x); x must be non-empty.");

    m.def("vec_exp_shift_sum", [](py::handle x, double shift, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto out = copy_of<T>(vec_arg<T>(x, "x"));
            T* o = out.mutable_data();
            T s;
            {
                py::gil_scoped_release release;
                s = table<T>(reference).exp_shift_sum(o, T(shift), int64_t(out.size()));
            }
            return py::make_tuple(std::move(out), double(s));
        });
    }, py::arg("x"), py::arg("shift"), ref, "Returns (exp(x - shift), its sum).");

    m.def("vec_softmax", [](py::handle x, bool reference, bool in_place) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto in = checked<T>(x, "x", -1);   // softmax of nothing: non-empty
            if (in.dimension() > 2)
                throw py::value_error("x must be 1-D (one row) or 2-D (rows), got " +
                                      std::to_string(in.dimension()) + " dimensions");
            const int64_t n = int64_t(in.shape().back()), rows = int64_t(in.size()) / n;
            std::vector<int64_t> shape(in.shape().begin(), in.shape().end());
            auto out = new_array<T>(shape, false);
            T* o = out.mutable_data();
            if (in_place) std::copy(in.data(), in.data() + in.size(), o);
            const T* i = in_place ? o : in.data();
            {
                py::gil_scoped_release release;
                table<T>(reference).softmax_rows(o, n, i, n, rows, n);
            }
            return std::move(out);
        });
    }, py::arg("x"), ref, py::arg("in_place") = false,
       "Returns softmax(x) over its last axis; x (n,) or (rows, n), non-empty. in_place: the "
       "kernel writes over a copy of x (out = in) instead of into a separate array.");

    m.def("vec_transpose", [](py::handle x, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto in = checked<T>(x, "x", 2, {-1, -1}, /*allow_empty=*/true);
            const int64_t rows = int64_t(in.shape()[0]), cols = int64_t(in.shape()[1]);
            auto out = new_array<T>({cols, rows}, false);
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).transpose(o, rows, in.data(), cols, rows, cols);
            }
            return std::move(out);
        });
    }, py::arg("x"), ref, "Returns x.T (a new C-contiguous array); x 2-D.");

    m.def("vec_add_rows", [](py::handle x, int64_t cols, py::object y, py::object sums,
                             bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = rows_arg<T>(x, cols);
            const int64_t rows = int64_t(X.shape()[0]), ldx = int64_t(X.shape()[1]);
            py::object y_out = py::none(), s_out = py::none();
            T* yo = nullptr;
            T* so = nullptr;
            int64_t ldy = 0;
            if (!y.is_none()) {
                auto Y = checked<T>(y, "y", 2, {rows, -1}, /*allow_empty=*/true);
                ldy = int64_t(Y.shape()[1]);
                if (ldy < cols) throw py::value_error("y must have at least cols columns");
                auto out = new_array<T>({rows, ldy}, false);
                std::copy(Y.data(), Y.data() + Y.size(), out.mutable_data());
                yo = out.mutable_data();
                y_out = std::move(out);
            }
            if (!sums.is_none()) {
                auto out = copy_of<T>(vec_arg<T>(sums, "sums", cols));
                so = out.mutable_data();
                s_out = std::move(out);
            }
            {
                py::gil_scoped_release release;
                table<T>(reference).add_rows(yo, ldy, X.data(), ldx, rows, cols, so);
            }
            return py::make_tuple(y_out, s_out);
        });
    }, py::arg("x"), py::arg("cols"), py::arg("y") = py::none(), py::arg("sums") = py::none(), ref,
       "On the first cols columns of x (rows, ldx): returns (y + x, sums + x's column sums), "
       "each None when not given; y (rows, ldy >= cols) and sums (cols,) are not modified.");

    m.def("vec_add_bias_rows", [](py::handle x, int64_t cols, py::handle bias, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = rows_arg<T>(x, cols);
            const int64_t rows = int64_t(X.shape()[0]), ldx = int64_t(X.shape()[1]);
            auto Bs = vec_arg<T>(bias, "bias", cols);
            auto out = new_array<T>({rows, cols}, false);
            {
                py::gil_scoped_release release;
                table<T>(reference).add_bias_rows(out.mutable_data(), cols, X.data(), ldx,
                                                  Bs.data(), rows, cols);
            }
            return std::move(out);
        });
    }, py::arg("x"), py::arg("cols"), py::arg("bias"), ref,
       "Returns x[:, :cols] + bias (a new (rows, cols) array); x 2-D, bias (cols,).");

    m.def("vec_layernorm_row", [](py::handle x, py::handle weight, py::handle bias, double eps,
                                  bool reference, bool in_place) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = checked<T>(x, "x", 1);
            const int64_t n = int64_t(X.size());
            auto Wt = vec_arg<T>(weight, "weight", n);
            auto Bs = vec_arg<T>(bias, "bias", n);
            auto out = new_array<T>({n}, false);
            T mean, rstd;
            T* o = out.mutable_data();
            if (in_place) std::copy(X.data(), X.data() + n, o);
            const T* in = in_place ? o : X.data();
            {
                py::gil_scoped_release release;
                table<T>(reference).layernorm_rows(o, in, Wt.data(), Bs.data(), 1, n, T(eps),
                                                   &mean, &rstd);
            }
            return py::make_tuple(std::move(out), double(mean), double(rstd));
        });
    }, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps") = 1e-5, ref,
       py::arg("in_place") = false,
       "Returns (LayerNorm of the row x, its mean, its 1 / sqrt(var + eps)). in_place: the "
       "kernel writes over a copy of x (out = x) instead of into a separate array.");

    m.def("vec_layernorm_row_backward", [](py::handle dx, py::handle dy, py::handle x,
                                           py::handle weight, double mean, double rstd,
                                           bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = checked<T>(x, "x", 1);
            const int64_t n = int64_t(X.size());
            auto Dy = vec_arg<T>(dy, "dy", n);
            auto Wt = vec_arg<T>(weight, "weight", n);
            auto out = copy_of<T>(vec_arg<T>(dx, "dx", n));
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).layernorm_row_backward(o, Dy.data(), X.data(), Wt.data(),
                                                           T(mean), T(rstd), n);
            }
            return std::move(out);
        });
    }, py::arg("dx"), py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"),
       py::arg("rstd"), ref, "Returns dx + the input gradient of one LayerNorm row (dx unchanged).");

    m.def("vec_scale", [](py::handle x, double a, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto out = copy_of<T>(vec_arg<T>(x, "x"));
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).scale(o, T(a), int64_t(out.size()));
            }
            return std::move(out);
        });
    }, py::arg("x"), py::arg("a"), ref, "Returns x * a.");

    m.def("vec_gelu", [](py::handle x, bool tanh_approximation, bool reference) {
        return dispatch_float(x, "x", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto X = vec_arg<T>(x, "x");
            auto out = new_array<T>({int64_t(X.size())}, false);
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).gelu(o, X.data(), int64_t(X.size()), tanh_approximation);
            }
            return std::move(out);
        });
    }, py::arg("x"), py::arg("tanh_approximation") = false, ref, "Returns gelu(x).");

    m.def("vec_relu_backward", [](py::handle dinp, py::handle dout, py::handle x, bool reference) {
        return backward_on_copy(dinp, dout, x, [&](auto* o, const auto* d, const auto* xs, int64_t n) {
            using T = std::remove_pointer_t<decltype(o)>;
            table<T>(reference).relu_backward(o, d, xs, n);
        });
    }, py::arg("dinp"), py::arg("dout"), py::arg("x"), ref,
       "Returns dinp + dout * (x > 0) (dinp is not modified).");

    m.def("vec_gelu_backward", [](py::handle dinp, py::handle dout, py::handle x,
                                  bool tanh_approximation, bool reference) {
        return backward_on_copy(dinp, dout, x, [&](auto* o, const auto* d, const auto* xs, int64_t n) {
            using T = std::remove_pointer_t<decltype(o)>;
            table<T>(reference).gelu_backward(o, d, xs, n, tanh_approximation);
        });
    }, py::arg("dinp"), py::arg("dout"), py::arg("x"), py::arg("tanh_approximation") = false, ref,
       "Returns dinp + dout * gelu'(x) (dinp is not modified).");

    m.def("small_gemm", [](py::handle a, py::handle b, py::handle c, double alpha, bool trans_a,
                           bool reference) {
        return dispatch_float(a, "a", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto A = checked<T>(a, "a", 2, {-1, -1}, /*allow_empty=*/true);
            // a is M x K, or K x M with trans_a (read in place through its strides)
            const int64_t M = dim(A, trans_a ? 1 : 0), K = dim(A, trans_a ? 0 : 1);
            const int64_t a_rs = trans_a ? 1 : K, a_cs = trans_a ? M : 1;
            auto B = checked<T>(b, "b", 2, {K, -1}, /*allow_empty=*/true);
            const int64_t N = dim(B, 1);
            const bool accumulate = !c.is_none();
            py::array_t<T> out = new_array<T>({M, N}, false);
            if (accumulate) {
                auto Cin = checked<T>(c, "c", 2, {M, N}, /*allow_empty=*/true);
                std::copy(Cin.data(), Cin.data() + Cin.size(), out.mutable_data());
            }
            T* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).small_gemm(M, N, K, T(alpha), A.data(), a_rs, a_cs, B.data(),
                                               N, o, N, accumulate);
            }
            return std::move(out);
        });
    }, py::arg("a"), py::arg("b"), py::arg("c") = py::none(), py::arg("alpha") = 1.0,
       py::arg("trans_a") = false, ref,
       "Returns alpha * op(a) @ b (+ c when c is given; c is not modified), op(a) = a.T with "
       "trans_a: the unpacked GEMM of the attention heads.");

    m.def("vec_adamw", [](py::handle param, py::handle grad, py::handle m_, py::handle v_, double lr,
                          double beta1, double beta2, double eps, double weight_decay_factor,
                          double bias_correction1, double bias_correction2_sqrt, bool reference) {
        return dispatch_float(param, "param", [&](auto tag) -> py::object {
            using T = decltype(tag);
            auto p = copy_of<T>(vec_arg<T>(param, "param"));
            const int64_t n = int64_t(p.size());
            auto g = vec_arg<T>(grad, "grad", n);
            auto mo = copy_of<T>(vec_arg<T>(m_, "m", n));
            auto vo = copy_of<T>(vec_arg<T>(v_, "v", n));
            T *pp = p.mutable_data(), *mp = mo.mutable_data(), *vp = vo.mutable_data();
            {
                py::gil_scoped_release release;
                table<T>(reference).adamw(pp, g.data(), mp, vp, n, T(lr), T(beta1), T(beta2),
                                          T(eps), T(weight_decay_factor), T(bias_correction1),
                                          T(bias_correction2_sqrt));
            }
            return py::make_tuple(std::move(p), std::move(mo), std::move(vo));
        });
    }, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("lr"),
       py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay_factor"),
       py::arg("bias_correction1"), py::arg("bias_correction2_sqrt"), ref,
       "One AdamW step; returns the updated (param, m, v) as new arrays (inputs unchanged).");
}

}  // namespace rmt::bindings
