// Bindings of the model kinds: parameters and gradients as numpy views (no copies) of the two
// flat buffers, and one forward/backward over a batch of whole sequences.
#include <pybind11/stl.h>

#include <set>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "model/model.hpp"

namespace rmt::bindings {
namespace {

using model::Model;
using model::ModelConfig;

ModelConfig config_from_dict(const py::dict& d) {
    static const std::set<std::string> known = {
        "kind", "vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_ff", "segment_len",
        "num_mem_tokens", "mem_len", "clamp_len", "same_length", "untie_rel_bias", "dropout",
        "dropatt", "mem_init", "layer_norm_eps", "init_std", "num_classes", "cls_id", "sep_id",
        "pad_id"};
    for (auto item : d) {
        const auto key = py::str(item.first).cast<std::string>();
        if (!known.count(key)) throw py::value_error("unknown model config field '" + key + "'");
    }
    ModelConfig c;
    auto get = [&](const char* key, auto& field) {
        if (d.contains(key) && !d[key].is_none()) {
            try {
                field = d[key].cast<std::remove_reference_t<decltype(field)>>();
            } catch (const py::cast_error&) {
                throw py::type_error(std::string("model config field '") + key + "' has the wrong type (" +
                                     std::string(py::str(py::type::of(d[key]).attr("__name__"))) + ")");
            }
        }
    };
    std::string kind = "rmt";
    get("kind", kind);
    try {
        c.kind = model::kind_from_string(kind);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    get("vocab_size", c.vocab_size);
    get("d_model", c.d_model);
    get("n_layers", c.n_layers);
    get("n_heads", c.n_heads);
    get("d_head", c.d_head);
    get("d_ff", c.d_ff);
    get("segment_len", c.segment_len);
    get("num_mem_tokens", c.num_mem_tokens);
    get("mem_len", c.mem_len);
    get("clamp_len", c.clamp_len);
    get("same_length", c.same_length);
    get("untie_rel_bias", c.untie_rel_bias);
    get("dropout", c.dropout);
    get("dropatt", c.dropatt);
    get("mem_init", c.mem_init);
    get("layer_norm_eps", c.layer_norm_eps);
    get("init_std", c.init_std);
    get("num_classes", c.num_classes);
    get("cls_id", c.cls_id);
    get("sep_id", c.sep_id);
    get("pad_id", c.pad_id);
    try {
        c.validate();
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    return c;
}

// A numpy view of `count` floats at `data`, kept alive by `owner` (no copy).
py::array_t<float> view(float* data, const std::vector<int64_t>& shape, py::handle owner) {
    std::vector<py::ssize_t> s(shape.begin(), shape.end()), strides(shape.size());
    py::ssize_t stride = sizeof(float);
    for (int64_t i = int64_t(shape.size()) - 1; i >= 0; --i) {
        strides[i] = stride;
        stride *= s[i];
    }
    return py::array_t<float>(s, strides, data, owner);
}

py::dict named_views(Model& m, float* base, py::handle owner) {
    py::dict out;
    for (auto& slot : m.layout().slots()) out[py::str(slot.name)] = view(base + slot.offset, slot.shape, owner);
    return out;
}

py::tuple run_unroll(Model& m, py::handle tokens_obj, py::handle targets_obj,
                     py::handle mask_obj, py::object bptt_depth_obj, bool return_logits,
                     py::handle init_memory_obj, bool compute_grad) {
    const auto& cfg = m.config();
    if (cfg.kind == model::Kind::RMTEncoder)
        throw py::value_error("kind 'rmt_encoder' is a classifier: use classify_loss_and_grad / classify");
    auto tokens = checked_ids(tokens_obj, "tokens", cfg.vocab_size);
    if (tokens.ndim() != 2)
        throw py::value_error("tokens must have shape (batch, length), got " + std::to_string(tokens.ndim()) + " dimensions");
    const int64_t B = tokens.shape(0), Ltot = tokens.shape(1);
    if (Ltot % cfg.segment_len != 0)
        throw py::value_error("tokens length " + std::to_string(Ltot) + " is not a multiple of segment_len " +
                              std::to_string(cfg.segment_len));
    if (B == 0 || Ltot == 0) throw py::value_error("tokens is empty (shape " + std::to_string(B) + ", " + std::to_string(Ltot) + ")");
    // Forward without targets: every target ignored, no loss.
    py::object no_targets;
    if (targets_obj.is_none()) {
        py::array_t<int32_t> t({B, Ltot});
        std::fill(t.mutable_data(), t.mutable_data() + B * Ltot, -100);
        no_targets = t;
        targets_obj = no_targets;
    }
    auto targets = checked_ids(targets_obj, "targets", cfg.vocab_size, true, -100);
    if (targets.ndim() != 2 || targets.shape(0) != B || targets.shape(1) != Ltot)
        throw py::value_error("targets must have the shape of tokens (" + std::to_string(B) + ", " +
                              std::to_string(Ltot) + ")");
    const float* mask = nullptr;
    if (!mask_obj.is_none()) {
        auto mv = checked<float>(mask_obj, "loss_mask", 2, {B, Ltot});
        check_finite(mv, "loss_mask");
        mask = mv.data();
    }
    int64_t depth = -1;
    if (!bptt_depth_obj.is_none()) {
        depth = bptt_depth_obj.cast<int64_t>();
        if (depth < 0) throw py::value_error("bptt_depth must be None (full) or >= 0, got " + std::to_string(depth));
    }
    const float* init_memory = nullptr;
    py::object init_grad = py::none();
    float* init_grad_ptr = nullptr;
    if (!init_memory_obj.is_none()) {
        if (cfg.kind != model::Kind::RMT)
            throw py::value_error("init_memory is only for kind 'rmt'");
        auto im = checked<float>(init_memory_obj, "init_memory", 3, {B, cfg.num_mem_tokens, cfg.d_model});
        check_finite(im, "init_memory");
        init_memory = im.data();
    }
    if (cfg.kind == model::Kind::RMT && compute_grad) {
        auto g = new_array<float>({B, cfg.num_mem_tokens, cfg.d_model});
        init_grad_ptr = g.mutable_data();
        init_grad = g;
    }
    py::object logits = py::none();
    float* logits_ptr = nullptr;
    if (return_logits) {
        auto l = new_array<float>({B, Ltot, cfg.vocab_size}, false);
        logits_ptr = l.mutable_data();
        logits = l;
    }
    model::UnrollResult r;
    {
        py::gil_scoped_release release;
        r = m.loss_and_grad(tokens.data(), targets.data(), mask, B, Ltot, depth, logits_ptr,
                            init_memory, init_grad_ptr, compute_grad);
    }
    if (compute_grad) return py::make_tuple(r.loss, logits, init_grad);
    py::object loss = r.selected > 0 ? py::object(py::float_(r.loss)) : py::object(py::none());
    return py::make_tuple(loss, logits, r.selected);
}

// rmt_encoder: (loss or None, logits (B, num_classes) or None) over right-aligned sequences.
py::tuple run_classify(Model& m, py::handle tokens_obj, py::handle labels_obj,
                       py::object bptt_depth_obj, bool return_logits, bool compute_grad) {
    const auto& cfg = m.config();
    if (cfg.kind != model::Kind::RMTEncoder)
        throw py::value_error(std::string("classify needs kind 'rmt_encoder', this model is '") +
                              model::kind_name(cfg.kind) + "' (use loss_and_grad / forward)");
    auto tokens = checked_ids(tokens_obj, "tokens", cfg.vocab_size);
    if (tokens.ndim() != 2)
        throw py::value_error("tokens must have shape (batch, length), got " + std::to_string(tokens.ndim()) + " dimensions");
    const int64_t B = tokens.shape(0), Ltot = tokens.shape(1);
    if (Ltot % cfg.segment_len != 0)
        throw py::value_error("tokens length " + std::to_string(Ltot) + " is not a multiple of segment_len " +
                              std::to_string(cfg.segment_len));
    const int32_t* labels = nullptr;
    py::array_t<int32_t> label_arr;
    if (!labels_obj.is_none()) {
        label_arr = checked_ids(labels_obj, "labels", cfg.num_classes);
        if (label_arr.ndim() != 1 || label_arr.shape(0) != B)
            throw py::value_error("labels must have shape (batch,) = (" + std::to_string(B) + ",)");
        labels = label_arr.data();
    }
    int64_t depth = -1;
    if (!bptt_depth_obj.is_none()) {
        depth = bptt_depth_obj.cast<int64_t>();
        if (depth < 0) throw py::value_error("bptt_depth must be None (full) or >= 0, got " + std::to_string(depth));
    }
    py::object logits = py::none();
    float* logits_ptr = nullptr;
    if (return_logits) {
        auto l = new_array<float>({B, cfg.num_classes}, false);
        logits_ptr = l.mutable_data();
        logits = l;
    }
    model::ClassifyResult r;
    {
        py::gil_scoped_release release;
        r = m.classify_loss_and_grad(tokens.data(), labels, B, Ltot, depth, logits_ptr, compute_grad);
    }
    py::object loss = labels ? py::object(py::float_(r.loss)) : py::object(py::none());
    return py::make_tuple(loss, logits);
}

py::array_t<float> step(Model& m, model::StreamState& st, py::handle tokens_obj) {
    const auto& cfg = m.config();
    auto tokens = checked_ids(tokens_obj, "tokens", cfg.vocab_size);
    if (tokens.ndim() != 2 || tokens.shape(0) != st.batch || tokens.shape(1) != cfg.segment_len)
        throw py::value_error("tokens must have shape (batch, segment_len) = (" + std::to_string(st.batch) +
                              ", " + std::to_string(cfg.segment_len) + ")");
    if (cfg.kind == model::Kind::RMTEncoder) {
        if (st.mem_tokens != cfg.num_mem_tokens || st.d_model != cfg.d_model ||
            int64_t(st.memory.size()) != st.batch * cfg.num_mem_tokens * cfg.d_model)
            throw py::value_error("state was not made by this model's init_stream");
        auto logits = new_array<float>({st.batch, cfg.num_classes}, false);
        float* out = logits.mutable_data();
        {
            py::gil_scoped_release release;
            m.step(st, tokens.data(), out);
        }
        return logits;
    }
    auto logits = new_array<float>({st.batch, cfg.segment_len, cfg.vocab_size}, false);
    float* out = logits.mutable_data();
    {
        py::gil_scoped_release release;
        m.step(st, tokens.data(), out);
    }
    return logits;
}

}  // namespace

void register_model(py::module_& core) {
    py::class_<model::StreamState>(core, "StreamState",
                                   "Memory and caches carried between segments at inference.")
        .def("copy", [](const model::StreamState& s) { return model::StreamState(s); },
             "An independent copy of the state.")
        .def_readonly("batch", &model::StreamState::batch)
        .def_readonly("cache_len", &model::StreamState::P)
        .def_readonly("segments_seen", &model::StreamState::segments_seen)
        .def_property_readonly("memory", [](py::object self) -> py::object {
            auto& st = self.cast<model::StreamState&>();
            if (st.memory.empty()) return py::none();
            return view(st.memory.data(), {st.batch, st.mem_tokens, st.d_model}, self);
        }, "The memory (batch, M, C) as a numpy view (no copy; writes go to the stream).");

    core.def("validate_config", [](const py::dict& d) { config_from_dict(d); }, py::arg("config"),
             "Raises ValueError naming the first bad field or combination of a model config dict.");
    py::class_<Model>(core, "Model", "A model kind over multi-segment unrolls (docs/MODELS.md).")
        .def(py::init([](const py::dict& config, uint64_t seed) {
                 return std::make_unique<Model>(config_from_dict(config), seed);
             }),
             py::arg("config"), py::arg("seed") = 0)
        .def_property_readonly("kind", [](const Model& m) { return model::kind_name(m.config().kind); })
        .def_property_readonly("num_parameters", &Model::num_parameters)
        .def("parameters", [](py::object self) {
            Model& m = self.cast<Model&>();
            return named_views(m, m.params(), self);
        }, "Named parameters: numpy views into the flat parameter buffer (writes go to the model).")
        .def("grads", [](py::object self) {
            Model& m = self.cast<Model&>();
            return named_views(m, m.grads(), self);
        }, "Named gradients: numpy views into the flat gradient buffer.")
        .def_property_readonly("flat_parameters", [](py::object self) {
            Model& m = self.cast<Model&>();
            return view(m.params(), {m.layout().total()}, self);
        })
        .def_property_readonly("flat_grads", [](py::object self) {
            Model& m = self.cast<Model&>();
            return view(m.grads(), {m.layout().total()}, self);
        })
        .def("zero_grad", [](Model& m) {
            std::fill(m.grads(), m.grads() + m.layout().total(), 0.0f);
        })
        .def("initialize", &Model::initialize, py::arg("seed"))
        .def_property("training", &Model::training, &Model::set_training)
        .def("set_dropout_seed", &Model::set_dropout_seed, py::arg("seed"))
        .def_property_readonly("spare_stream_workspace_bytes",
                               &Model::spare_stream_workspace_bytes)
        .def("init_stream", &Model::init_stream, py::arg("batch"))
        .def("attention", [](Model& m, const model::StreamState& st, int64_t layer) {
            const auto& c = m.config();
            if (layer < 0 || layer >= c.n_layers)
                throw py::index_error("layer must be in [0, " + std::to_string(c.n_layers) +
                                      "), got " + std::to_string(layer));
            if (st.segments_seen == 0)
                throw py::value_error("no segment has run through this state yet");
            // The workspaces the last segment ran in: one, or (rmt_encoder with threads) one per
            // share of the batch, in batch order. The encoder runs only the samples with content
            // in the segment, and a share without any ran no layer (its workspace may hold an
            // earlier segment's).
            std::vector<const model::SegmentActivations*> parts;
            int64_t B = st.batch;
            if (c.kind == model::Kind::RMTEncoder) {
                B = 0;
                for (int64_t c = 0; c < st.shares(); ++c) {
                    const auto* seg = &st.share_workspace(c);
                    if (seg->rows.empty()) continue;
                    parts.push_back(seg);
                    B += int64_t(seg->rows.size());
                }
            } else {
                parts.push_back(&st.workspace);
            }
            const int64_t NH = c.n_heads, Q = c.query_rows();
            if (B == 0) return new_array<float>({0, NH, Q, Q});
            for (const auto* seg : parts)
                if (int64_t(seg->layers.size()) <= layer)
                    throw py::value_error("no segment has run through this state yet");
            // (the last layer computed only the rows something reads: attention_probs
            // recomputes it on all of them)
            std::vector<Buffer> probs;
            int64_t elements = 0;
            for (const auto* seg : parts) {
                probs.push_back(m.attention_probs(*seg, layer));
                elements += int64_t(probs.back().size());
            }
            const int64_t K = elements / (B * NH * Q);
            for (size_t i = 0; i < parts.size(); ++i) {
                const int64_t rows = c.kind == model::Kind::RMTEncoder
                                         ? int64_t(parts[i]->rows.size()) : st.batch;
                if (int64_t(probs[i].size()) != rows * NH * Q * K)
                    throw std::runtime_error("the state's attention maps do not match its last "
                                             "segment (did that step fail?)");
            }
            auto out = new_array<float>({B, NH, Q, K}, false);
            float* dst = out.mutable_data();
            for (const Buffer& p : probs) dst = std::copy(p.begin(), p.end(), dst);
            return out;
        }, py::arg("state"), py::arg("layer"),
           "The attention probabilities of layer `layer` in the last segment run through `state`: "
           "a new array (batch, heads, query rows, key rows) (rmt_encoder: only the samples with "
           "content in that segment).")
        .def("step", &step, py::arg("state"), py::arg("tokens"),
             "Runs one segment (batch, segment_len) without gradient, advancing the stream state; "
             "returns the logits (batch, segment_len, vocab); rmt_encoder: the segment's CLS "
             "logits (batch, num_classes), NaN for a sample whose segment is all padding (its "
             "memory is kept).")
        .def("classify_loss_and_grad",
             [](Model& m, py::handle tokens, py::handle labels, py::object bptt_depth,
                bool return_logits) {
                 if (labels.is_none()) throw py::value_error("labels is required (use classify() for logits only)");
                 return run_classify(m, tokens, labels, bptt_depth, return_logits, true);
             },
             py::arg("tokens"), py::arg("labels"), py::arg("bptt_depth") = py::none(),
             py::arg("return_logits") = false,
             "rmt_encoder: one forward and backward over right-aligned sequences (batch, S * "
             "segment_len), pad_id marking empty positions, against labels (batch,). Accumulates "
             "into grads(). Returns (loss, logits (batch, num_classes) or None).")
        .def("classify",
             [](Model& m, py::handle tokens) {
                 py::tuple r = run_classify(m, tokens, py::none(), py::none(), true, false);
                 return py::object(r[1]);
             },
             py::arg("tokens"),
             "rmt_encoder: forward only; returns the last segment's CLS logits (batch, num_classes).")
        .def("loss_and_grad",
             [](Model& m, py::handle tokens, py::handle targets, py::handle loss_mask,
                py::object bptt_depth, bool return_logits, py::handle init_memory) {
                 if (targets.is_none()) throw py::value_error("targets is required (use forward() for logits only)");
                 return run_unroll(m, tokens, targets, loss_mask, bptt_depth, return_logits, init_memory, true);
             },
             py::arg("tokens"), py::arg("targets"),
             py::arg("loss_mask") = py::none(), py::arg("bptt_depth") = py::none(),
             py::arg("return_logits") = false, py::arg("init_memory") = py::none(),
             "One forward and backward over whole sequences (batch, S * segment_len). Accumulates "
             "into grads(). Returns (loss, logits or None, initial-memory gradient or None).")
        .def("forward",
             [](Model& m, py::handle tokens, py::handle targets, py::handle loss_mask,
                py::handle init_memory) {
                 return run_unroll(m, tokens, targets, loss_mask, py::none(), true, init_memory, false);
             },
             py::arg("tokens"), py::arg("targets") = py::none(), py::arg("loss_mask") = py::none(),
             py::arg("init_memory") = py::none(),
             "Forward only over whole sequences: returns (loss or None, logits (batch, L, vocab), "
             "number of tokens in the loss). Gradients are untouched.");
}

}  // namespace rmt::bindings
