// Threads, ISA selection and the GEMM, exposed at the top of `_core`.
#include <pybind11/stl.h>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "kernels/gemm.hpp"
#include "kernels/isa.hpp"
#include "kernels/profile.hpp"
#include "kernels/threads.hpp"

namespace rmt::bindings {
namespace {

// C = alpha * op(A) op(B) + beta * C (+ bias per column) on 2-D arrays; returns C (a new array
// when c is None).
template <typename T>
py::array_t<T> gemm_binding(py::handle a, py::handle b, py::handle c, bool trans_a, bool trans_b,
                            double alpha, double beta, py::handle bias, bool relu,
                            bool reference) {
    auto A = checked<T>(a, "a", 2);
    auto B = checked<T>(b, "b", 2);
    const int64_t M = trans_a ? dim(A, 1) : dim(A, 0), K = trans_a ? dim(A, 0) : dim(A, 1);
    const int64_t KB = trans_b ? dim(B, 1) : dim(B, 0), N = trans_b ? dim(B, 0) : dim(B, 1);
    if (K != KB)
        throw py::value_error("gemm: inner dimensions differ: op(a) is " + std::to_string(M) + "x" +
                              std::to_string(K) + ", op(b) is " + std::to_string(KB) + "x" +
                              std::to_string(N));
    py::array_t<T> out;
    if (c.is_none()) {
        out = new_array<T>({M, N}, false);
        beta = 0;
    } else {
        checked_writeable<T>(c, "c", 2, {M, N});
        out = py::reinterpret_borrow<py::array_t<T>>(c);
    }
    const T* bias_data = nullptr;
    if (!bias.is_none()) bias_data = checked<T>(bias, "bias", 1, {N}).data();
    T* C = out.mutable_data();
    {
        py::gil_scoped_release release;
        auto fn = reference ? &kernels::gemm_reference<T> : &kernels::gemm<T>;
        fn(trans_a, trans_b, M, N, K, T(alpha), A.data(), dim(A, 1), B.data(), dim(B, 1), T(beta), C, N,
           bias_data, relu);
    }
    return out;
}

}  // namespace

void register_runtime(py::module_& core) {
    core.def("set_num_threads", &kernels::set_num_threads, py::arg("n"),
             "Number of OpenMP threads the core uses (a build without OpenMP always uses 1). rmt's "
             "own setting: PyTorch's torch.set_num_threads does not change it, nor it PyTorch's, "
             "although in one process the two share one OpenMP runtime.");
    core.def("get_num_threads", &kernels::get_num_threads,
             "The number of threads the core uses: set_num_threads's, until then OMP_NUM_THREADS, "
             "else the processors this process may run on (1 without OpenMP).");
    core.def("available_isas", &kernels::available_isas,
             "Instruction sets this CPU can run, best first ('scalar' always).");
    core.def("get_isa", &kernels::current_isa, "The instruction set the kernels currently use.");
    core.def("set_isa", [](const std::string& name) {
        try {
            kernels::set_isa(name);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
    }, py::arg("name"), "Force an instruction set ('avx512', 'avx2', 'scalar' or 'best').");
    core.def("gemm_tile", []() {
        auto& f = kernels::gemm_micro<float>();
        return py::make_tuple(f.mr, f.nr);
    }, "The (MR, NR) register tile of the active float32 GEMM micro-kernel.");
    core.def("gemm_blocking", [](py::object dtype) {
        bool f64 = false;
        if (!dtype.is_none()) {
            const py::dtype dt = py::dtype::from_args(dtype);
            if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
                throw py::type_error("gemm_blocking: dtype must be float32 or float64, got " +
                                     py::str(dtype).cast<std::string>());
            f64 = dt.itemsize() == 8;
        }
        auto blocking = [](const auto& micro) {
            py::dict d;
            d["mr"] = micro.mr;
            d["nr"] = micro.nr;
            d["kc"] = micro.kc;
            d["mc"] = micro.mc;
            d["nc"] = kernels::gemm_nc();
            return d;
        };
        return f64 ? blocking(kernels::gemm_micro<double>()) : blocking(kernels::gemm_micro<float>());
    }, py::arg("dtype") = py::none(),
       "The active GEMM's register tile and cache blocking for float32 (or dtype): a dict of mr, "
       "nr (the tile), kc (K slice), mc (rows of op(A) per packed block), nc (columns of op(B) "
       "per packed slice).");
    core.def("fma_peak_gflops", [](py::object threads, double seconds) {
        const int n = threads.is_none() ? kernels::get_num_threads() : threads.cast<int>();
        if (n < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(n));
        if (!(seconds > 0)) throw py::value_error("seconds must be > 0");
        py::gil_scoped_release release;
        return kernels::fma_peak_gflops(n, seconds);
    }, py::arg("threads") = py::none(), py::arg("seconds") = 0.2,
       "Measured float32 FMA peak in GFLOP/s of `threads` threads (default: the current number) "
       "running a register-only FMA loop of the active ISA at once; best of 5 runs after a "
       "warm-up, about `seconds` in all.");
    core.def("profile_enable", &kernels::profile::set_enabled, py::arg("on") = true,
             "Turns the per-op profiler on or off (off by default). Enabled, every instrumented "
             "op call of the models and the training step adds its wall time to a named counter.");
    core.def("profile_enabled", &kernels::profile::enabled, "Whether the profiler is on.");
    core.def("profile_reset", &kernels::profile::reset, "Zeroes every profiler counter.");
    core.def("profile_report", []() {
        py::list out;
        for (const auto& r : kernels::profile::report()) {
            py::dict d;
            d["name"] = r.name;
            d["seconds"] = r.seconds;
            d["calls"] = r.calls;
            d["flops"] = r.flops;
            out.append(d);
        }
        return out;
    }, "The profiler counters called since the last reset, as dicts {name, seconds, calls, flops} "
       "(flops 0 where a scope does not count them), in order of first use. rmt.profile() is the "
       "convenient way to use them.");
#ifdef RMT_HAVE_OPENMP
    core.attr("has_openmp") = true;
#else
    core.attr("has_openmp") = false;
#endif

    auto gemm = [](bool reference) {
        return [reference](py::handle a, py::handle b, py::handle c, bool trans_a, bool trans_b,
                           double alpha, double beta, py::handle bias, bool relu) -> py::array {
            return dispatch_float(a, "a", [&](auto tag) -> py::array {
                using T = decltype(tag);
                return gemm_binding<T>(a, b, c, trans_a, trans_b, alpha, beta, bias, relu,
                                       reference);
            });
        };
    };
    const char* doc =
        "C = alpha * op(a) @ op(b) + beta * c + bias, with op(x) = x.T when trans_x and bias (N,) "
        "added to every row (None: no bias); relu=True stores max(C, 0) instead (NaN -> 0), the "
        "fused bias + ReLU of a feed-forward layer. Returns c (a new array when c is None). a, b, "
        "c, bias: C-contiguous arrays of one float dtype.";
    core.def("gemm", gemm(false), py::arg("a"), py::arg("b"), py::arg("c") = py::none(),
             py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("alpha") = 1.0,
             py::arg("beta") = 0.0, py::arg("bias") = py::none(), py::arg("relu") = false, doc);
    core.def("gemm_reference", gemm(true), py::arg("a"), py::arg("b"), py::arg("c") = py::none(),
             py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("alpha") = 1.0,
             py::arg("beta") = 0.0, py::arg("bias") = py::none(), py::arg("relu") = false,
             "The scalar reference GEMM (same arguments as gemm).");
}

}  // namespace rmt::bindings
