#include "model/parameters.hpp"

#include <stdexcept>

namespace rmt::model {

int64_t ParameterLayout::add(const std::string& name, std::vector<int64_t> shape) {
    TensorSlot slot{name, std::move(shape), total_};
    total_ += (slot.size() + 15) / 16 * 16;
    slots_.push_back(slot);
    return slot.offset;
}

const TensorSlot& ParameterLayout::find(const std::string& name) const {
    for (auto& s : slots_)
        if (s.name == name) return s;
    throw std::out_of_range("no parameter named '" + name + "'");
}

bool ParameterLayout::contains(const std::string& name) const {
    for (auto& s : slots_)
        if (s.name == name) return true;
    return false;
}

}  // namespace rmt::model
