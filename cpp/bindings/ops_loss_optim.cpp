// Bindings of cross-entropy, the Adam(W) step and gradient clipping.
#include <climits>
#include <cmath>
#include <string>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/optim.hpp"

namespace rmt::bindings {
namespace {

std::vector<int64_t> shape_of(py::handle obj) {
    auto a = py::reinterpret_borrow<py::array>(obj);
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// targets (N,) of any integer dtype in [0, V) or == ignore_index, as int32.
py::array_t<int32_t> checked_targets(py::handle obj, int64_t N, int64_t V, int64_t ignore_index) {
    if (ignore_index < INT32_MIN || ignore_index > INT32_MAX)
        throw py::value_error("ignore_index must fit in int32, got " + std::to_string(ignore_index));
    auto targets = checked_ids(obj, "targets", V, true, ignore_index);
    if (targets.ndim() != 1 || targets.shape(0) != N)
        throw py::value_error("targets has shape " + shape_string(shape_of(targets)) +
                              ", expected (" + std::to_string(N) + ",)");
    return targets;
}

template <typename T>
const T* optional_weights(py::handle obj, int64_t N) {
    if (obj.is_none()) return nullptr;
    return checked<T>(obj, "weights", 1, {N}).data();
}

template <typename T>
py::tuple cross_entropy_forward(py::handle logits_obj, py::handle targets_obj, py::handle weights_obj,
                                int64_t ignore_index) {
    auto logits = checked<T>(logits_obj, "logits", 2);
    const int64_t N = dim(logits, 0), V = dim(logits, 1);
    auto targets = checked_targets(targets_obj, N, V, ignore_index);
    const T* weights = optional_weights<T>(weights_obj, N);
    auto losses = new_array<T>({N}, false);
    auto lse = new_array<T>({N}, false);
    T *lp = losses.mutable_data(), *sp = lse.mutable_data();
    int64_t count;
    {
        py::gil_scoped_release release;
        count = ops::cross_entropy_forward<T>(lp, sp, logits.data(), targets.data(), weights, N, V,
                                              ignore_index);
    }
    return py::make_tuple(losses, lse, count);
}

template <typename T>
py::array_t<T> cross_entropy_backward(py::handle dlosses_obj, py::handle logits_obj, py::handle lse_obj,
                                      py::handle targets_obj, py::handle weights_obj,
                                      int64_t ignore_index) {
    auto logits = checked<T>(logits_obj, "logits", 2);
    const int64_t N = dim(logits, 0), V = dim(logits, 1);
    auto dlosses = checked<T>(dlosses_obj, "dlosses", 1, {N});
    auto lse = checked<T>(lse_obj, "lse", 1, {N});
    auto targets = checked_targets(targets_obj, N, V, ignore_index);
    const T* weights = optional_weights<T>(weights_obj, N);
    auto dlogits = new_array<T>({N, V});
    T* d = dlogits.mutable_data();
    {
        py::gil_scoped_release release;
        ops::cross_entropy_backward<T>(d, dlosses.data(), logits.data(), lse.data(), targets.data(),
                                       weights, N, V, ignore_index);
    }
    return dlogits;
}

template <typename T>
void adam_step(py::handle param_obj, py::handle grad_obj, py::handle m_obj, py::handle v_obj,
               int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
               bool decoupled) {
    if (step < 1) throw py::value_error("step must be >= 1 (1-based), got " + std::to_string(step));
    if (!(lr >= 0.0)) throw py::value_error("lr must be >= 0, got " + std::to_string(lr));
    if (!(beta1 >= 0.0 && beta1 < 1.0)) throw py::value_error("beta1 must be in [0, 1), got " + std::to_string(beta1));
    if (!(beta2 >= 0.0 && beta2 < 1.0)) throw py::value_error("beta2 must be in [0, 1), got " + std::to_string(beta2));
    if (!(eps >= 0.0)) throw py::value_error("eps must be >= 0, got " + std::to_string(eps));
    if (!(weight_decay >= 0.0)) throw py::value_error("weight_decay must be >= 0, got " + std::to_string(weight_decay));
    auto param = checked_writeable<T>(param_obj, "param", -1);
    auto shape = shape_of(param_obj);
    const int nd = int(shape.size());
    auto grad = checked<T>(grad_obj, "grad", nd, shape);
    auto m = checked_writeable<T>(m_obj, "m", nd, shape);
    auto v = checked_writeable<T>(v_obj, "v", nd, shape);
    if (param.data() == m.data() || param.data() == v.data() || m.data() == v.data() ||
        grad.data() == m.data() || grad.data() == v.data())
        throw py::value_error("param, m and v must be distinct arrays (and m, v distinct from grad)");
    ops::AdamHyper<T> h;
    h.lr = T(lr);
    h.beta1 = T(beta1);
    h.beta2 = T(beta2);
    h.eps = T(eps);
    h.weight_decay = T(weight_decay);
    h.decoupled_weight_decay = decoupled;
    T *pp = param.data(), *mp = m.data(), *vp = v.data();
    const T* gp = grad.data();
    const int64_t n = int64_t(param.size());
    py::gil_scoped_release release;
    ops::adam_step<T>(pp, gp, mp, vp, n, step, h);
}

template <typename T>
double grad_norm(py::handle grad_obj) {
    auto grad = checked<T>(grad_obj, "grad", -1);
    py::gil_scoped_release release;
    return ops::grad_norm<T>(grad.data(), int64_t(grad.size()));
}

template <typename T>
double clip_grad_norm(py::handle grad_obj, double max_norm) {
    if (!(max_norm >= 0.0)) throw py::value_error("max_norm must be >= 0, got " + std::to_string(max_norm));
    auto grad = checked_writeable<T>(grad_obj, "grad", -1);
    py::gil_scoped_release release;
    return ops::clip_grad_norm<T>(grad.data(), int64_t(grad.size()), max_norm);
}

template <typename T>
void clip_grad_value(py::handle grad_obj, double clip_value) {
    if (!(clip_value >= 0.0)) throw py::value_error("clip_value must be >= 0, got " + std::to_string(clip_value));
    auto grad = checked_writeable<T>(grad_obj, "grad", -1);
    py::gil_scoped_release release;
    ops::clip_grad_value<T>(grad.data(), int64_t(grad.size()), clip_value);
}

}  // namespace

void register_ops_loss_optim(py::module_& ops) {
    ops.def("cross_entropy_forward", [](py::handle logits, py::handle targets, py::handle weights, int64_t ignore_index) -> py::tuple {
        return dispatch_float(logits, "logits", [&](auto tag) -> py::tuple {
            return cross_entropy_forward<decltype(tag)>(logits, targets, weights, ignore_index);
        });
    }, py::arg("logits"), py::arg("targets"), py::arg("weights") = py::none(), py::arg("ignore_index") = -100,
       "(losses (N,), lse (N,), count): losses = weight * (logsumexp(logits) - logits[target]), 0 where "
       "target == ignore_index; count = rows with target != ignore_index and weight != 0.");
    ops.def("cross_entropy_backward", [](py::handle dlosses, py::handle logits, py::handle lse, py::handle targets,
                                         py::handle weights, int64_t ignore_index) -> py::array {
        return dispatch_float(logits, "logits", [&](auto tag) -> py::array {
            return cross_entropy_backward<decltype(tag)>(dlosses, logits, lse, targets, weights, ignore_index);
        });
    }, py::arg("dlosses"), py::arg("logits"), py::arg("lse"), py::arg("targets"), py::arg("weights") = py::none(),
       py::arg("ignore_index") = -100,
       "dlogits (N, V) = dlosses * weight * (softmax(logits) - onehot(target)), 0 on ignored rows.");
    ops.def("adam_step", [](py::handle param, py::handle grad, py::handle m, py::handle v, int64_t step, double lr,
                            double beta1, double beta2, double eps, double weight_decay, bool decoupled) {
        dispatch_float(param, "param", [&](auto tag) {
            adam_step<decltype(tag)>(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled);
        });
    }, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("step"), py::arg("lr"),
       py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0,
       py::arg("decoupled") = false,
       "One Adam (decoupled=False, L2 decay) or AdamW (decoupled=True) step as torch.optim; updates "
       "param, m and v in place; step is 1-based.");
    ops.def("grad_norm", [](py::handle grad) -> double {
        return dispatch_float(grad, "grad", [&](auto tag) -> double { return grad_norm<decltype(tag)>(grad); });
    }, py::arg("grad"), "The L2 norm of grad (accumulated in float64).");
    ops.def("clip_grad_norm", [](py::handle grad, double max_norm) -> double {
        return dispatch_float(grad, "grad", [&](auto tag) -> double {
            return clip_grad_norm<decltype(tag)>(grad, max_norm);
        });
    }, py::arg("grad"), py::arg("max_norm"),
       "Scales grad in place by max_norm / (norm + 1e-6) when that is below 1 "
       "(torch.nn.utils.clip_grad_norm_); returns the norm before clipping.");
    ops.def("clip_grad_value", [](py::handle grad, double clip_value) {
        dispatch_float(grad, "grad", [&](auto tag) { clip_grad_value<decltype(tag)>(grad, clip_value); });
    }, py::arg("grad"), py::arg("clip_value"), "Clamps grad in place to [-clip_value, clip_value].");
}

}  // namespace rmt::bindings
