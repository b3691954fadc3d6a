// Binding of the C++ training step: the Python Trainer calls step() once per batch; forward,
// backward, clipping and the optimizer update run with the GIL released.
#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "training/trainer.hpp"

namespace rmt::bindings {
namespace {

using training::Trainer;

py::array_t<float> view_of(Buffer& buf, py::handle owner) {
    return py::array_t<float>({py::ssize_t(buf.size())}, {py::ssize_t(sizeof(float))}, buf.data(), owner);
}

void check_lr(double lr) {
    if (!(lr >= 0) || !std::isfinite(lr)) throw py::value_error("lr must be a finite number >= 0");
}

// The token batch both steps take: (B, L) with L a whole number of segments, and an
// accumulation count that splits B into non-empty chunks.
template <typename Ids>
std::pair<int64_t, int64_t> batch_shape(const Ids& tokens, int64_t segment_len, int64_t accumulate) {
    if (tokens.ndim() != 2) throw py::value_error("tokens must have shape (batch, length)");
    const int64_t B = tokens.shape(0), L = tokens.shape(1);
    if (B == 0 || L == 0) throw py::value_error("tokens is empty");
    if (L % segment_len != 0)
        throw py::value_error("tokens length " + std::to_string(L) + " is not a multiple of segment_len " +
                              std::to_string(segment_len));
    if (accumulate < 1 || accumulate > B)
        throw py::value_error("accumulate must be in [1, batch size " + std::to_string(B) + "], got " +
                              std::to_string(accumulate));
    return {B, L};
}

py::dict as_dict(const training::StepStats& s) {
    py::dict out;
    out["loss"] = s.loss;
    out["grad_norm"] = s.grad_norm;
    out["tokens"] = s.selected;
    out["finite"] = s.finite;
    return out;
}

py::dict step(Trainer& t, py::handle tokens_obj, py::handle targets_obj, py::handle mask_obj,
              double lr, int64_t accumulate) {
    const auto& cfg = t.model().config();
    if (cfg.kind == model::Kind::RMTEncoder)
        throw py::value_error("kind 'rmt_encoder' is a classifier: use step_classify(tokens, labels)");
    check_lr(lr);
    auto tokens = checked_ids(tokens_obj, "tokens", cfg.vocab_size);
    const auto [B, L] = batch_shape(tokens, cfg.segment_len, accumulate);
    auto targets = checked_ids(targets_obj, "targets", cfg.vocab_size, true, -100);
    if (targets.ndim() != 2 || targets.shape(0) != B || targets.shape(1) != L)
        throw py::value_error("targets must have the shape of tokens");
    const float* mask = nullptr;
    if (!mask_obj.is_none()) {
        auto mv = checked<float>(mask_obj, "loss_mask", 2, {B, L});
        check_finite(mv, "loss_mask");
        mask = mv.data();
    }
    training::StepStats s;
    {
        py::gil_scoped_release release;
        s = t.step(tokens.data(), targets.data(), mask, B, L, lr, accumulate);
    }
    return as_dict(s);
}

py::dict step_classify(Trainer& t, py::handle tokens_obj, py::handle labels_obj, double lr,
                       int64_t accumulate) {
    const auto& cfg = t.model().config();
    if (cfg.kind != model::Kind::RMTEncoder)
        throw py::value_error("step_classify is for kind 'rmt_encoder'; use step() for decoders");
    check_lr(lr);
    auto tokens = checked_ids(tokens_obj, "tokens", cfg.vocab_size);
    const auto [B, L] = batch_shape(tokens, cfg.segment_len, accumulate);
    auto labels = checked_ids(labels_obj, "labels", cfg.num_classes);
    if (labels.ndim() != 1 || labels.shape(0) != B)
        throw py::value_error("labels must have shape (batch,) = (" + std::to_string(B) + ",)");
    training::StepStats s;
    {
        py::gil_scoped_release release;
        s = t.step_classify(tokens.data(), labels.data(), B, L, lr, accumulate);
    }
    return as_dict(s);
}

}  // namespace

void register_training(py::module_& core) {
    py::class_<Trainer>(core, "TrainerCore",
                        "One training step in C++ (forward, backward, clipping, Adam/AdamW).")
        .def(py::init([](model::Model& m, bool adamw, double beta1, double beta2, double eps,
                         double weight_decay, double clip_norm, double clip_value,
                         py::object bptt_depth) {
                 if (!(beta1 >= 0 && beta1 < 1)) throw py::value_error("beta1 must be in [0, 1)");
                 if (!(beta2 >= 0 && beta2 < 1)) throw py::value_error("beta2 must be in [0, 1)");
                 if (!(eps > 0)) throw py::value_error("eps must be > 0");
                 if (!(weight_decay >= 0)) throw py::value_error("weight_decay must be >= 0");
                 if (!(clip_norm >= 0)) throw py::value_error("clip_norm must be >= 0 (0: off)");
                 if (!(clip_value >= 0)) throw py::value_error("clip_value must be >= 0 (0: off)");
                 int64_t depth = -1;
                 if (!bptt_depth.is_none()) {
                     depth = bptt_depth.cast<int64_t>();
                     if (depth < 0) throw py::value_error("bptt_depth must be None (full) or >= 0");
                 }
                 training::OptimizerSettings s;
                 s.decoupled_weight_decay = adamw;
                 s.beta1 = beta1;
                 s.beta2 = beta2;
                 s.eps = eps;
                 s.weight_decay = weight_decay;
                 return std::make_unique<Trainer>(m, s, clip_norm, clip_value, depth);
             }),
             py::arg("model"), py::arg("adamw") = true, py::arg("beta1") = 0.9,
             py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0,
             py::arg("clip_norm") = 0.0, py::arg("clip_value") = 0.0,
             py::arg("bptt_depth") = py::none(), py::keep_alive<1, 2>())
        .def("step", &step, py::arg("tokens"), py::arg("targets"), py::arg("loss_mask") = py::none(),
             py::kw_only(), py::arg("lr"), py::arg("accumulate") = 1,
             "Zeroes the gradients, runs forward and backward over `accumulate` row chunks of the "
             "batch, clips, and takes one optimizer step (skipped when the loss or gradient is not "
             "finite). Returns {loss, grad_norm, tokens, finite}.")
        .def("step_classify", &step_classify, py::arg("tokens"), py::arg("labels"), py::kw_only(),
             py::arg("lr"), py::arg("accumulate") = 1,
             "step() for the rmt_encoder: labels (batch,) of the last segment's classification.")
        .def_property("steps_taken", &Trainer::steps_taken, &Trainer::set_steps_taken)
        .def_property_readonly("exp_avg", [](py::object self) {
            return view_of(self.cast<Trainer&>().exp_avg(), self);
        }, "Adam's first moment, a numpy view of the flat buffer (the parameter layout).")
        .def_property_readonly("exp_avg_sq", [](py::object self) {
            return view_of(self.cast<Trainer&>().exp_avg_sq(), self);
        }, "Adam's second moment, a numpy view of the flat buffer.")
        .def_readwrite("clip_norm", &Trainer::clip_norm)
        .def_readwrite("clip_value", &Trainer::clip_value)
        .def_readwrite("bptt_depth", &Trainer::bptt_depth);
}

}  // namespace rmt::bindings
