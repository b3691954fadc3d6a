#include "bindings/checks.hpp"

namespace rmt::bindings {

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

void check_ids(const NumpyView<int32_t>& ids, const char* name, int64_t vocab, bool has_allowed,
               int64_t allowed) {
    const int32_t* p = ids.data();
    for (size_t i = 0; i < ids.size(); ++i) {
        if (has_allowed && p[i] == allowed) continue;
        if (p[i] < 0 || p[i] >= vocab)
            throw py::index_error(std::string(name) + " holds id " + std::to_string(p[i]) +
                                  " at flat index " + std::to_string(i) + ", outside [0, " +
                                  std::to_string(vocab) + ")");
    }
}

py::array_t<int32_t> checked_ids(py::handle obj, const char* name, int64_t vocab, bool has_allowed,
                                 int64_t allowed) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array of integer token ids, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    const char kind = arr.dtype().kind();
    if (kind != 'i' && kind != 'u')
        throw py::type_error(std::string(name) + " must have an integer dtype, got " +
                             std::string(py::str(arr.dtype())));
    if (arr.size() == 0) throw py::value_error(std::string(name) + " is empty");
    if (arr.ndim() < 1) throw py::value_error(std::string(name) + " must have at least 1 dimension");
    // Check the range on int64 values before narrowing, so a huge id cannot wrap into range.
    auto wide = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    const int64_t* p = wide.data();
    for (py::ssize_t i = 0; i < wide.size(); ++i) {
        if (has_allowed && p[i] == allowed) continue;
        if (p[i] < 0 || p[i] >= vocab)
            throw py::index_error(std::string(name) + " holds id " + std::to_string(p[i]) +
                                  " at flat index " + std::to_string(i) + ", outside [0, " +
                                  std::to_string(vocab) + ")");
    }
    return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(arr);
}

char float_kind(py::handle obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (arr.dtype().is(py::dtype::of<float>())) return 'f';
    if (arr.dtype().is(py::dtype::of<double>())) return 'd';
    throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " +
                         std::string(py::str(arr.dtype())));
}

}  // namespace rmt::bindings
