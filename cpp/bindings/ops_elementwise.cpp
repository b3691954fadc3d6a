#include "bindings/register.hpp"

namespace rmt::bindings {

void register_ops_elementwise(py::module_& ops) {}

}  // namespace rmt::bindings
