#include "bindings/register.hpp"

namespace rmt::bindings {

void register_ops_attention(py::module_& ops) {}

}  // namespace rmt::bindings
