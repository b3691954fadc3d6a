#include "bindings/register.hpp"

namespace rmt::bindings {

void register_ops_loss_optim(py::module_& ops) {}

}  // namespace rmt::bindings
