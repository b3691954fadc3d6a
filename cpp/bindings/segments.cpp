// rmt._core.SegmentIterator: a batch of long token arrays cut into (batch, segment_len) segments
// without copies. A segment every row fills is a numpy view of the caller's array; the few that
// need padding (the last one of a left-aligned batch, the first of a right-aligned one) are
// gathered ONCE at construction into a buffer the iterator owns, and handed out as views of it.
// Rows of different lengths (a list of 1-D arrays) are copied once into one padded buffer.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/register.hpp"
#include "data/segments.hpp"

namespace rmt::bindings {
namespace {

using data::Align;
using data::RowSource;
using data::SegmentPlan;

bool is_int_like(py::handle obj) {
    return !py::isinstance<py::bool_>(obj) && PyIndex_Check(obj.ptr());
}

int64_t int_arg(py::handle obj, const char* name) {
    if (!is_int_like(obj))
        throw py::type_error(std::string(name) + " must be an int, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    try {
        return py::int_(py::reinterpret_borrow<py::object>(obj)).cast<int64_t>();
    } catch (const py::cast_error&) {
        throw py::value_error(std::string(name) + " = " + std::string(py::str(obj)) + " is out of the int64 range");
    }
}

bool is_integer_dtype(const py::dtype& dt) { return dt.kind() == 'i' || dt.kind() == 'u'; }

// The bytes of `value` in dtype `dt`; ValueError if it does not fit.
std::vector<char> fill_bytes(const py::dtype& dt, int64_t value, const std::string& what) {
    py::array_t<int64_t> wide(1);
    wide.mutable_data()[0] = value;
    py::array narrow = wide.attr("astype")(dt);
    if (!py::int_(narrow.attr("item")(0)).equal(py::int_(value)))
        throw py::value_error(what + " = " + std::to_string(value) + " does not fit dtype " +
                              std::string(py::str(dt)));
    const auto* p = static_cast<const char*>(narrow.data());
    return std::vector<char>(p, p + dt.itemsize());
}

// One input (tokens or targets) as rows of bytes, plus the arrays keeping them alive.
struct Rows {
    py::dtype dtype;
    std::vector<py::array> keep;   // (B, L) array, or one 1-D array per row
    std::vector<RowSource> rows;
    std::vector<int64_t> lengths;
    bool is_2d = false;
};

Rows read_rows(py::handle obj, const char* name) {
    Rows r;
    if (py::isinstance<py::array>(obj)) {
        auto arr = py::reinterpret_borrow<py::array>(obj);
        if (!is_integer_dtype(arr.dtype()))
            throw py::type_error(std::string(name) + " must have an integer dtype, got " +
                                 std::string(py::str(arr.dtype())));
        if (arr.ndim() != 2)
            throw py::value_error(std::string(name) + " must have 2 dimensions (batch, length), got " +
                                  std::to_string(arr.ndim()) +
                                  " (rows of different lengths: pass a list of 1-D arrays)");
        if (arr.size() == 0)
            throw py::value_error(std::string(name) + " is empty (shape (" + std::to_string(arr.shape(0)) +
                                  ", " + std::to_string(arr.shape(1)) + "))");
        r.dtype = arr.dtype();
        r.is_2d = true;
        const auto* base = static_cast<const char*>(arr.data());
        for (py::ssize_t b = 0; b < arr.shape(0); ++b) {
            r.rows.push_back({base + b * arr.strides(0), int64_t(arr.strides(1))});
            r.lengths.push_back(arr.shape(1));
        }
        r.keep.push_back(arr);
        return r;
    }
    if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
        throw py::type_error(std::string(name) + " must be a 2-D numpy array or a list of 1-D arrays, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    if (seq.size() == 0) throw py::value_error(std::string(name) + " is an empty list");
    auto np = py::module_::import("numpy");
    std::vector<py::array> raw;
    for (size_t b = 0; b < seq.size(); ++b) {
        const std::string row_name = std::string(name) + "[" + std::to_string(b) + "]";
        py::array a = np.attr("asarray")(seq[b]);
        if (a.size() == 0 && !py::isinstance<py::array>(seq[b]))   // [] is float64 to numpy
            a = np.attr("asarray")(seq[b], "int64");
        if (!is_integer_dtype(a.dtype()))
            throw py::type_error(row_name + " must hold integer token ids, got dtype " +
                                 std::string(py::str(a.dtype())));
        if (a.ndim() != 1)
            throw py::value_error(row_name + " must be 1-D, got " + std::to_string(a.ndim()) + " dimensions");
        raw.push_back(a);
    }
    // One dtype for the padded buffer: the rows' own if they agree, int64 otherwise.
    r.dtype = raw[0].dtype();
    for (auto& a : raw)
        if (!a.dtype().is(r.dtype)) r.dtype = py::dtype::of<int64_t>();
    for (auto& a : raw) {
        py::array c = a.dtype().is(r.dtype) ? a : py::array(a.attr("astype")(r.dtype));
        r.rows.push_back({static_cast<const char*>(c.data()), int64_t(c.strides(0))});
        r.lengths.push_back(c.shape(0));
        r.keep.push_back(c);
    }
    return r;
}

// A read-only (B, T) view at `data` of `base`'s memory.
py::array view_2d(const py::dtype& dt, int64_t B, int64_t T, int64_t row_stride, int64_t col_stride,
                  const char* data, py::handle base) {
    py::array v(dt, std::vector<py::ssize_t>{B, T}, std::vector<py::ssize_t>{row_stride, col_stride},
                data, base);
    v.attr("flags").attr("writeable") = false;
    return v;
}

// The segments of one input: each is a view of `source` at column view_col[s] (2-D input,
// segments every row fills), of `padded` (its slot) or of `source` = our padded (B, S*T) buffer
// (list input).
struct SegmentedArray {
    py::dtype dtype;
    py::array source;
    int64_t row_stride = 0, col_stride = 0;
    py::array padded;                 // (slots, B, T), or none
    std::vector<int64_t> view_col;    // -1: a padded slot
    std::vector<int64_t> slot;

    py::array segment(const SegmentPlan& plan, int64_t s) const {
        const int64_t B = plan.batch(), T = plan.segment_len();
        if (view_col[size_t(s)] >= 0)
            return view_2d(dtype, B, T, row_stride, col_stride,
                           static_cast<const char*>(source.data()) + view_col[size_t(s)] * col_stride, source);
        const int64_t item = dtype.itemsize();
        return view_2d(dtype, B, T, T * item, item,
                       static_cast<const char*>(padded.data()) + slot[size_t(s)] * B * T * item, padded);
    }
};

SegmentedArray segment_rows(const SegmentPlan& plan, const Rows& r, const std::vector<char>& pad) {
    SegmentedArray out;
    out.dtype = r.dtype;
    const int64_t B = plan.batch(), T = plan.segment_len(), S = plan.num_segments();
    const int64_t item = r.dtype.itemsize();
    out.view_col.assign(size_t(S), -1);
    out.slot.assign(size_t(S), -1);
    if (r.is_2d) {
        // Views of the caller's array where the whole segment is there; a slot for the others.
        out.source = r.keep[0];
        out.row_stride = out.source.strides(0);
        out.col_stride = out.source.strides(1);
        int64_t slots = 0;
        for (int64_t s = 0; s < S; ++s) {
            if (plan.is_full(s)) out.view_col[size_t(s)] = plan.slice(s, 0).source_offset;
            else out.slot[size_t(s)] = slots++;
        }
        if (slots == 0) return out;
        out.padded = py::array(r.dtype, std::vector<py::ssize_t>{slots, B, T});
        char* base = static_cast<char*>(out.padded.mutable_data());
        py::gil_scoped_release release;
        for (int64_t s = 0; s < S; ++s)
            if (out.slot[size_t(s)] >= 0)
                data::gather_segment(plan, s, r.rows, size_t(item), pad.data(),
                                     base + out.slot[size_t(s)] * B * T * item, T * item);
        return out;
    }
    // Rows of different lengths: one copy into the padded layout (B, S * T), views of it.
    out.source = py::array(r.dtype, std::vector<py::ssize_t>{B, S * T});
    out.row_stride = S * T * item;
    out.col_stride = item;
    for (int64_t s = 0; s < S; ++s) out.view_col[size_t(s)] = s * T;
    char* base = static_cast<char*>(out.source.mutable_data());
    py::gil_scoped_release release;
    for (int64_t s = 0; s < S; ++s)
        data::gather_segment(plan, s, r.rows, size_t(item), pad.data(), base + s * T * item, S * T * item);
    return out;
}

// What every iterator over one input shares: the plan and the arrays segments are views of.
struct SegmentSource {
    SegmentPlan plan;
    SegmentedArray tokens;
    bool has_targets = false;
    SegmentedArray targets;
    int64_t pad_id = 0;
};

struct Segment {
    int64_t index;
    py::array tokens;
    py::object targets;
    py::array mask;
    py::array empty;
};

struct SegmentIterator {
    std::shared_ptr<const SegmentSource> source;
    int64_t cursor = 0;
    // The object rmt.segments returns is re-iterable: iter() on it starts a new pass (an
    // iterator proper, whose iter() is itself), so every for-loop sees every segment.
    bool is_pass = false;

    int64_t size() const { return source->plan.num_segments(); }

    Segment at(int64_t s) const {
        const auto& plan = source->plan;
        const int64_t B = plan.batch(), T = plan.segment_len();
        Segment seg;
        seg.index = s;
        seg.tokens = source->tokens.segment(plan, s);
        seg.targets = source->has_targets ? py::object(source->targets.segment(plan, s)) : py::object(py::none());
        py::array_t<bool> mask({B, T}), empty(B);
        data::segment_mask(plan, s, mask.mutable_data(), empty.mutable_data());
        seg.mask = mask;
        seg.empty = empty;
        return seg;
    }
};

SegmentIterator make_iterator(py::handle tokens_obj, py::handle segment_len_obj, const std::string& align_str,
                              py::handle pad_id_obj, py::handle targets_obj, py::handle num_segments_obj) {
    const int64_t segment_len = int_arg(segment_len_obj, "segment_len");
    if (segment_len < 1)
        throw py::value_error("segment_len must be >= 1, got " + std::to_string(segment_len));
    Align align;
    try {
        align = data::align_from_string(align_str);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    const int64_t pad_id = int_arg(pad_id_obj, "pad_id");
    int64_t num_segments = -1;
    if (!num_segments_obj.is_none()) {
        num_segments = int_arg(num_segments_obj, "num_segments");
        if (num_segments < 1)
            throw py::value_error("num_segments must be None or >= 1, got " + std::to_string(num_segments));
    }
    Rows tokens = read_rows(tokens_obj, "tokens");
    bool any = false;
    for (int64_t n : tokens.lengths) any = any || n > 0;
    if (!any) throw py::value_error("tokens is empty (every row has length 0)");
    Rows targets;
    const bool has_targets = !targets_obj.is_none();
    if (has_targets) {
        targets = read_rows(targets_obj, "targets");
        if (targets.is_2d != tokens.is_2d)
            throw py::type_error(std::string("targets must have the form of tokens (") +
                                 (tokens.is_2d ? "a 2-D array" : "a list of 1-D arrays") + ")");
        if (targets.lengths.size() != tokens.lengths.size())
            throw py::value_error("targets has " + std::to_string(targets.lengths.size()) + " rows, tokens " +
                                  std::to_string(tokens.lengths.size()));
        for (size_t b = 0; b < tokens.lengths.size(); ++b)
            if (targets.lengths[b] != tokens.lengths[b])
                throw py::value_error("targets row " + std::to_string(b) + " has length " +
                                      std::to_string(targets.lengths[b]) + ", tokens row " +
                                      std::to_string(tokens.lengths[b]));
    }
    std::unique_ptr<SegmentPlan> plan;
    try {
        plan = std::make_unique<SegmentPlan>(tokens.lengths, segment_len, align, num_segments);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    const auto token_pad = fill_bytes(tokens.dtype, pad_id, "pad_id (tokens dtype)");
    std::vector<char> target_pad;
    if (has_targets) target_pad = fill_bytes(targets.dtype, -100, "the ignore index -100 (targets dtype)");
    auto src = std::make_shared<SegmentSource>(SegmentSource{*plan, {}, has_targets, {}, pad_id});
    src->tokens = segment_rows(src->plan, tokens, token_pad);
    if (has_targets) src->targets = segment_rows(src->plan, targets, target_pad);
    return SegmentIterator{std::move(src), 0, false};
}

int64_t normalize_index(int64_t s, int64_t n) {
    const int64_t i = s < 0 ? s + n : s;
    if (i < 0 || i >= n)
        throw py::index_error("segment index " + std::to_string(s) + " out of range for " + std::to_string(n) +
                              " segments");
    return i;
}

}  // namespace

void register_segments(py::module_& core) {
    py::class_<Segment>(core, "Segment",
                        "One segment of a batch: tokens (B, T) (a read-only view, no copy), targets (B, T) "
                        "or None (-100 on padding), mask (B, T) bool valid positions, empty (B,) bool rows "
                        "with no valid token, index.")
        .def_readonly("index", &Segment::index)
        .def_readonly("tokens", &Segment::tokens)
        .def_readonly("targets", &Segment::targets)
        .def_readonly("mask", &Segment::mask)
        .def_readonly("empty", &Segment::empty)
        .def("__repr__", [](const Segment& s) {
            return "Segment(index=" + std::to_string(s.index) + ", shape=(" + std::to_string(s.tokens.shape(0)) +
                   ", " + std::to_string(s.tokens.shape(1)) + "))";
        });

    py::class_<SegmentIterator>(core, "SegmentIterator",
                                "Segments (B, segment_len) of a batch of token sequences, as views (see "
                                "rmt.segments). len(), [i] (negative i counts from the end), iter() starts a "
                                "new pass (an iterator whose iter() is itself), next() advances this "
                                "object's own cursor.")
        .def(py::init(&make_iterator), py::arg("tokens"), py::arg("segment_len"), py::arg("align") = "left",
             py::arg("pad_id") = 0, py::arg("targets") = py::none(), py::arg("num_segments") = py::none())
        .def("__len__", &SegmentIterator::size)
        .def("__getitem__", [](const SegmentIterator& it, int64_t s) {
            return it.at(normalize_index(s, it.size()));
        }, py::arg("index"))
        .def("__iter__", [](py::object self) -> py::object {
            const auto& it = self.cast<const SegmentIterator&>();
            if (it.is_pass) return self;
            return py::cast(SegmentIterator{it.source, 0, true});
        })
        .def("__next__", [](SegmentIterator& it) {
            if (it.cursor >= it.size()) throw py::stop_iteration();
            return it.at(it.cursor++);
        })
        .def_property_readonly("segment_len", [](const SegmentIterator& it) { return it.source->plan.segment_len(); })
        .def_property_readonly("num_segments", &SegmentIterator::size)
        .def_property_readonly("batch_size", [](const SegmentIterator& it) { return it.source->plan.batch(); })
        .def_property_readonly("align", [](const SegmentIterator& it) {
            return std::string(data::align_name(it.source->plan.align()));
        })
        .def_property_readonly("pad_id", [](const SegmentIterator& it) { return it.source->pad_id; })
        .def_property_readonly("lengths", [](const SegmentIterator& it) {
            const auto& l = it.source->plan.lengths();
            py::array_t<int64_t> out(py::ssize_t(l.size()));
            std::copy(l.begin(), l.end(), out.mutable_data());
            return out;
        }, "Each row's number of tokens (a copy).")
        .def("__repr__", [](const SegmentIterator& it) {
            const auto& p = it.source->plan;
            return "SegmentIterator(batch_size=" + std::to_string(p.batch()) + ", segment_len=" +
                   std::to_string(p.segment_len()) + ", num_segments=" + std::to_string(p.num_segments()) +
                   ", align='" + data::align_name(p.align()) + "')";
        });
}

}  // namespace rmt::bindings
