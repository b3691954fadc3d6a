// Bindings of the attention ops: masked softmax, the masks, attention and relative attention.
#include <string>

#include "bindings/checks.hpp"
#include "bindings/register.hpp"
#include "ops/attention.hpp"
#include "ops/masks.hpp"
#include "ops/softmax.hpp"

namespace rmt::bindings {
namespace {

std::vector<int64_t> shape_of(py::handle obj) {
    auto a = py::reinterpret_borrow<py::array>(obj);
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// A mask (1 = may attend) of dtype uint8 or bool, C-contiguous, non-empty, of rank ndim; returns
// its bytes (numpy bools are single bytes 0/1). -1 in `expected` = any size.
const uint8_t* checked_mask(py::handle obj, const char* name, int ndim,
                            const std::vector<int64_t>& expected) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<uint8_t>()) && !arr.dtype().is(py::dtype::of<bool>()))
        throw py::type_error(std::string(name) + " must have dtype bool or uint8, got " +
                             std::string(py::str(arr.dtype())));
    auto shape = shape_of(obj);
    if (arr.ndim() != ndim)
        throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) +
                              " dimensions, got shape " + shape_string(shape));
    for (size_t d = 0; d < expected.size(); ++d)
        if (expected[d] >= 0 && shape[d] != expected[d])
            throw py::value_error(std::string(name) + " has shape " + shape_string(shape) +
                                  ", expected " + shape_string(expected) + " (-1 = any)");
    if (arr.size() == 0)
        throw py::value_error(std::string(name) + " is empty (shape " + shape_string(shape) + ")");
    if (!(arr.flags() & py::array::c_style))
        throw py::value_error(std::string(name) +
                              " must be C-contiguous (use numpy.ascontiguousarray)");
    return static_cast<const uint8_t*>(arr.data());
}

// An attention mask: (Tq, Tk) shared by the batch or (B, Tq, Tk) one per row. Sets the batch
// stride the ops take.
const uint8_t* attention_mask(py::handle obj, int64_t B, int64_t Tq, int64_t Tk, int64_t& stride) {
    stride = 0;
    if (obj.is_none()) return nullptr;
    if (py::isinstance<py::array>(obj) && py::reinterpret_borrow<py::array>(obj).ndim() == 3) {
        stride = Tq * Tk;
        return checked_mask(obj, "allowed", 3, {B, Tq, Tk});
    }
    if (py::isinstance<py::array>(obj) && py::reinterpret_borrow<py::array>(obj).ndim() != 2)
        throw py::value_error("allowed must have shape (Tq, Tk) = " + shape_string({Tq, Tk}) +
                              " or (B, Tq, Tk) = " + shape_string({B, Tq, Tk}) + ", got " +
                              shape_string(shape_of(obj)));
    return checked_mask(obj, "allowed", 2, {Tq, Tk});
}

int64_t head_size(int64_t C, int64_t n_heads) {
    if (n_heads < 1) throw py::value_error("n_heads must be >= 1, got " + std::to_string(n_heads));
    if (C % n_heads != 0)
        throw py::value_error("n_heads = " + std::to_string(n_heads) + " does not divide C = " +
                              std::to_string(C));
    return C / n_heads;
}

py::array_t<bool> new_mask(int64_t rows, int64_t cols) {
    py::array_t<bool> a({py::ssize_t(rows), py::ssize_t(cols)});
    std::fill(a.mutable_data(), a.mutable_data() + a.size(), false);
    return a;
}

uint8_t* mask_bytes(py::array_t<bool>& a) { return reinterpret_cast<uint8_t*>(a.mutable_data()); }

template <typename T>
py::array_t<T> masked_softmax_forward(py::handle scores_obj, py::handle allowed_obj) {
    auto scores = checked<T>(scores_obj, "scores", -1);
    auto shape = shape_of(scores_obj);
    const int64_t N = shape.back(), R = int64_t(scores.size()) / N;
    const uint8_t* allowed = nullptr;
    int64_t mask_rows = 1;
    if (!allowed_obj.is_none()) {
        allowed = checked_mask(allowed_obj, "allowed", 2, {-1, N});
        mask_rows = shape_of(allowed_obj)[0];
        if (R % mask_rows != 0)
            throw py::value_error("allowed has " + std::to_string(mask_rows) +
                                  " rows, which does not divide the " + std::to_string(R) +
                                  " rows of scores");
    }
    auto probs = new_array<T>(shape, false);
    T* p = probs.mutable_data();
    {
        py::gil_scoped_release release;
        ops::masked_softmax_forward<T>(p, scores.data(), allowed, R, N, mask_rows);
    }
    return probs;
}

template <typename T>
py::array_t<T> masked_softmax_backward(py::handle dprobs_obj, py::handle probs_obj) {
    auto probs = checked<T>(probs_obj, "probs", -1);
    auto shape = shape_of(probs_obj);
    auto dprobs = checked<T>(dprobs_obj, "dprobs", int(shape.size()), shape);
    const int64_t N = shape.back(), R = int64_t(probs.size()) / N;
    auto dscores = new_array<T>(shape);
    T* d = dscores.mutable_data();
    {
        py::gil_scoped_release release;
        ops::masked_softmax_backward<T>(d, dprobs.data(), probs.data(), R, N);
    }
    return dscores;
}

template <typename T>
py::tuple attention_forward(py::handle q_obj, py::handle k_obj, py::handle v_obj, int64_t n_heads,
                            py::handle allowed_obj) {
    auto q = checked<T>(q_obj, "q", 3);
    const int64_t B = dim(q, 0), Tq = dim(q, 1), C = dim(q, 2);
    const int64_t hs = head_size(C, n_heads);
    auto k = checked<T>(k_obj, "k", 3, {B, -1, C});
    const int64_t Tk = dim(k, 1);
    auto v = checked<T>(v_obj, "v", 3, {B, Tk, C});
    int64_t stride = 0;
    const uint8_t* allowed = attention_mask(allowed_obj, B, Tq, Tk, stride);
    auto out = new_array<T>({B, Tq, C}, false);
    auto probs = new_array<T>({B, n_heads, Tq, Tk}, false);
    T* o = out.mutable_data();
    T* p = probs.mutable_data();
    {
        py::gil_scoped_release release;
        ops::attention_forward<T>(o, p, q.data(), k.data(), v.data(), allowed, stride, B, Tq, Tk,
                                  n_heads, hs);
    }
    return py::make_tuple(out, probs);
}

template <typename T>
py::tuple attention_backward(py::handle dout_obj, py::handle q_obj, py::handle k_obj,
                             py::handle v_obj, py::handle probs_obj, int64_t n_heads,
                             bool overwrite) {
    auto q = checked<T>(q_obj, "q", 3);
    const int64_t B = dim(q, 0), Tq = dim(q, 1), C = dim(q, 2);
    const int64_t hs = head_size(C, n_heads);
    auto k = checked<T>(k_obj, "k", 3, {B, -1, C});
    const int64_t Tk = dim(k, 1);
    auto v = checked<T>(v_obj, "v", 3, {B, Tk, C});
    auto dout = checked<T>(dout_obj, "dout", 3, {B, Tq, C});
    auto probs = checked<T>(probs_obj, "probs", 4, {B, n_heads, Tq, Tk});
    auto dq = gradient_array<T>({B, Tq, C}, overwrite);
    auto dk = gradient_array<T>({B, Tk, C}, overwrite);
    auto dv = gradient_array<T>({B, Tk, C}, overwrite);
    T *dqp = dq.mutable_data(), *dkp = dk.mutable_data(), *dvp = dv.mutable_data();
    {
        py::gil_scoped_release release;
        ops::attention_backward<T>(dqp, dkp, dvp, dout.data(), q.data(), k.data(), v.data(),
                                   probs.data(), B, Tq, Tk, n_heads, hs, overwrite);
    }
    return py::make_tuple(dq, dk, dv);
}

struct RelShapes {
    int64_t B, Q, K, C, hs;
};

template <typename T>
RelShapes check_rel(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle rk_obj,
                    py::handle u_obj, py::handle vb_obj, int64_t n_heads) {
    auto q = checked<T>(q_obj, "q", 3);
    RelShapes s{dim(q, 0), dim(q, 1), 0, dim(q, 2), 0};
    s.hs = head_size(s.C, n_heads);
    auto k = checked<T>(k_obj, "k", 3, {s.B, -1, s.C});
    s.K = dim(k, 1);
    if (s.K < s.Q)
        throw py::value_error("k has " + std::to_string(s.K) + " positions, fewer than the " +
                              std::to_string(s.Q) + " queries of q (the queries are the last Q " +
                              "of the K key positions)");
    checked<T>(v_obj, "v", 3, {s.B, s.K, s.C});
    checked<T>(rk_obj, "rk", 2, {s.K, s.C});
    checked<T>(u_obj, "u_bias", 1, {s.C});
    checked<T>(vb_obj, "v_bias", 1, {s.C});
    return s;
}

template <typename T>
const T* data_of(py::handle obj) {
    return static_cast<const T*>(py::reinterpret_borrow<py::array>(obj).data());
}

template <typename T>
py::tuple rel_attention_forward(py::handle q, py::handle k, py::handle v, py::handle rk,
                                py::handle u, py::handle vb, int64_t n_heads,
                                py::handle allowed_obj) {
    const RelShapes s = check_rel<T>(q, k, v, rk, u, vb, n_heads);
    int64_t stride = 0;
    const uint8_t* allowed = attention_mask(allowed_obj, s.B, s.Q, s.K, stride);
    auto out = new_array<T>({s.B, s.Q, s.C}, false);
    auto probs = new_array<T>({s.B, n_heads, s.Q, s.K}, false);
    T* o = out.mutable_data();
    T* p = probs.mutable_data();
    const T *qp = data_of<T>(q), *kp = data_of<T>(k), *vp = data_of<T>(v), *rkp = data_of<T>(rk),
            *up = data_of<T>(u), *vbp = data_of<T>(vb);
    {
        py::gil_scoped_release release;
        ops::rel_attention_forward<T>(o, p, qp, kp, vp, rkp, up, vbp, allowed, stride, s.B, s.Q,
                                      s.K, n_heads, s.hs);
    }
    return py::make_tuple(out, probs);
}

template <typename T>
py::tuple rel_attention_backward(py::handle dout_obj, py::handle q, py::handle k, py::handle v,
                                 py::handle rk, py::handle u, py::handle vb, py::handle probs_obj,
                                 int64_t n_heads, bool overwrite) {
    const RelShapes s = check_rel<T>(q, k, v, rk, u, vb, n_heads);
    auto dout = checked<T>(dout_obj, "dout", 3, {s.B, s.Q, s.C});
    auto probs = checked<T>(probs_obj, "probs", 4, {s.B, n_heads, s.Q, s.K});
    auto dq = gradient_array<T>({s.B, s.Q, s.C}, overwrite);
    auto dk = gradient_array<T>({s.B, s.K, s.C}, overwrite);
    auto dv = gradient_array<T>({s.B, s.K, s.C}, overwrite);
    auto drk = new_array<T>({s.K, s.C});
    auto du = new_array<T>({s.C});
    auto dvb = new_array<T>({s.C});
    T *dqp = dq.mutable_data(), *dkp = dk.mutable_data(), *dvp = dv.mutable_data();
    T *drkp = drk.mutable_data(), *dup = du.mutable_data(), *dvbp = dvb.mutable_data();
    const T *qp = data_of<T>(q), *kp = data_of<T>(k), *vp = data_of<T>(v), *rkp = data_of<T>(rk),
            *up = data_of<T>(u), *vbp = data_of<T>(vb);
    {
        py::gil_scoped_release release;
        ops::rel_attention_backward<T>(dqp, dkp, dvp, drkp, dup, dvbp, dout.data(), qp, kp, vp,
                                       rkp, up, vbp, probs.data(), s.B, s.Q, s.K, n_heads, s.hs,
                                       overwrite);
    }
    return py::make_tuple(dq, dk, dv, drk, du, dvb);
}

template <typename T>
py::array_t<T> rel_position_encoding(int64_t K, int64_t C, int64_t clamp_len) {
    auto R = new_array<T>({K, C}, false);
    T* r = R.mutable_data();
    ops::rel_position_encoding<T>(r, K, C, clamp_len);
    return R;
}

void check_positive(int64_t x, const char* name) {
    if (x < 1) throw py::value_error(std::string(name) + " must be >= 1, got " + std::to_string(x));
}

void check_nonnegative(int64_t x, const char* name) {
    if (x < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(x));
}

}  // namespace

void register_ops_attention(py::module_& ops) {
    ops.def("masked_softmax_forward", [](py::handle scores, py::handle allowed) -> py::array {
        return dispatch_float(scores, "scores", [&](auto tag) -> py::array {
            return masked_softmax_forward<decltype(tag)>(scores, allowed);
        });
    }, py::arg("scores"), py::arg("allowed") = py::none(),
       "probs (..., N): softmax over the last axis where allowed (bool/uint8 (R', N), row r of the "
       "flattened scores uses mask row r % R'); a row with nothing allowed is all zeros.");
    ops.def("masked_softmax_backward", [](py::handle dprobs, py::handle probs) -> py::array {
        return dispatch_float(probs, "probs", [&](auto tag) -> py::array {
            return masked_softmax_backward<decltype(tag)>(dprobs, probs);
        });
    }, py::arg("dprobs"), py::arg("probs"),
       "dscores = probs * (dprobs - sum(dprobs * probs, -1)).");
    ops.def("causal_mask", [](int64_t Tq, int64_t cache, int64_t window) {
        check_positive(Tq, "Tq");
        check_nonnegative(cache, "cache");
        check_nonnegative(window, "same_length_window");
        auto m = new_mask(Tq, cache + Tq);
        ops::causal_mask(mask_bytes(m), Tq, cache, window);
        return m;
    }, py::arg("Tq"), py::arg("cache") = 0, py::arg("same_length_window") = 0,
       "bool (Tq, cache + Tq): query i sees key j iff j <= cache + i (and, with "
       "same_length_window = w > 0, j > cache + i - w).");
    ops.def("rmt_decoder_mask", [](int64_t M, int64_t T, int64_t cache) {
        check_nonnegative(M, "M");
        check_positive(T, "T");
        check_nonnegative(cache, "cache");
        auto m = new_mask(2 * M + T, cache + 2 * M + T);
        ops::rmt_decoder_mask(mask_bytes(m), M, T, cache);
        return m;
    }, py::arg("M"), py::arg("T"), py::arg("cache") = 0,
       "bool (2M + T, cache + 2M + T) over [cache; mem_read; x; mem_write]: read rows see the "
       "cache and the read block, token rows also their causal past, write rows everything.");
    ops.def("padding_mask", [](int64_t Tq, int64_t Tk, int64_t length) {
        check_positive(Tq, "Tq");
        check_positive(Tk, "Tk");
        check_nonnegative(length, "length");
        auto m = new_mask(Tq, Tk);
        ops::padding_mask(mask_bytes(m), Tq, Tk, length);
        return m;
    }, py::arg("Tq"), py::arg("Tk"), py::arg("length"),
       "bool (Tq, Tk): key j visible to every query iff j < length.");
    ops.def("attention_forward", [](py::handle q, py::handle k, py::handle v, int64_t n_heads,
                                    py::handle allowed) -> py::tuple {
        return dispatch_float(q, "q", [&](auto tag) -> py::tuple {
            return attention_forward<decltype(tag)>(q, k, v, n_heads, allowed);
        });
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_heads"), py::arg("allowed") = py::none(),
       "(out (B, Tq, C), probs (B, NH, Tq, Tk)): softmax(q k^T / sqrt(hs) | allowed) v per head, "
       "heads interleaved along C; allowed (Tq, Tk) or (B, Tq, Tk), bool or uint8.");
    ops.def("attention_backward", [](py::handle dout, py::handle q, py::handle k, py::handle v,
                                     py::handle probs, int64_t n_heads, bool overwrite) -> py::tuple {
        return dispatch_float(q, "q", [&](auto tag) -> py::tuple {
            return attention_backward<decltype(tag)>(dout, q, k, v, probs, n_heads, overwrite);
        });
    }, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("probs"),
       py::arg("n_heads"), py::arg("overwrite") = false,
       "(dq, dk, dv) of attention_forward. overwrite: they are written over NaN instead of "
       "accumulated into zeros (the engine's path for fresh buffers; the result is the same).");
    ops.def("rel_attention_forward", [](py::handle q, py::handle k, py::handle v, py::handle rk,
                                        py::handle u_bias, py::handle v_bias, int64_t n_heads,
                                        py::handle allowed) -> py::tuple {
        return dispatch_float(q, "q", [&](auto tag) -> py::tuple {
            return rel_attention_forward<decltype(tag)>(q, k, v, rk, u_bias, v_bias, n_heads,
                                                        allowed);
        });
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("rk"), py::arg("u_bias"),
       py::arg("v_bias"), py::arg("n_heads"), py::arg("allowed") = py::none(),
       "Transformer-XL relative attention: q (B, Q, C) are the last Q of the K positions of k, v "
       "(B, K, C); rk (K, C) row r encodes distance K-1-r; returns (out (B, Q, C), probs "
       "(B, NH, Q, K)).");
    ops.def("rel_attention_backward", [](py::handle dout, py::handle q, py::handle k, py::handle v,
                                         py::handle rk, py::handle u_bias, py::handle v_bias,
                                         py::handle probs, int64_t n_heads,
                                         bool overwrite) -> py::tuple {
        return dispatch_float(q, "q", [&](auto tag) -> py::tuple {
            return rel_attention_backward<decltype(tag)>(dout, q, k, v, rk, u_bias, v_bias, probs,
                                                         n_heads, overwrite);
        });
    }, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("rk"),
       py::arg("u_bias"), py::arg("v_bias"), py::arg("probs"), py::arg("n_heads"),
       py::arg("overwrite") = false,
       "(dq, dk, dv, drk, du_bias, dv_bias) of rel_attention_forward. overwrite: as "
       "attention_backward's (dq, dk, dv only).");
    ops.def("rel_position_encoding", [](int64_t K, int64_t C, int64_t clamp_len,
                                        py::object dtype) -> py::array {
        check_positive(K, "K");
        check_positive(C, "C");
        if (C % 2 != 0) throw py::value_error("C must be even, got " + std::to_string(C));
        auto dt = py::dtype::from_args(dtype);
        if (dt.is(py::dtype::of<float>())) return rel_position_encoding<float>(K, C, clamp_len);
        if (dt.is(py::dtype::of<double>())) return rel_position_encoding<double>(K, C, clamp_len);
        throw py::type_error("dtype must be float32 or float64, got " + std::string(py::str(dt)));
    }, py::arg("K"), py::arg("C"), py::arg("clamp_len") = 0,
       py::arg("dtype") = py::dtype::of<float>(),
       "R (K, C): row r = [sin(p f) | cos(p f)], p = K-1-r (min with clamp_len if > 0), "
       "f_i = 1/10000^(2i/C).");
}

}  // namespace rmt::bindings
