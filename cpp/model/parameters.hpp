// All parameters in one contiguous buffer, all gradients in a second with the same layout
// (llm.c): zero-grad is one fill, the optimizer one flat loop, a checkpoint one write, and each
// named tensor is a view (offset, shape) into both.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rmt::model {

struct TensorSlot {
    std::string name;              // PyTorch-style dotted name
    std::vector<int64_t> shape;
    int64_t offset = 0;            // into the flat buffers
    int64_t size() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

class ParameterLayout {
public:
    // Appends a tensor; returns its offset. Offsets are 16-float aligned (64 bytes).
    int64_t add(const std::string& name, std::vector<int64_t> shape);
    const std::vector<TensorSlot>& slots() const { return slots_; }
    const TensorSlot& find(const std::string& name) const;   // throws std::out_of_range
    bool contains(const std::string& name) const;
    int64_t total() const { return total_; }

private:
    std::vector<TensorSlot> slots_;
    int64_t total_ = 0;
};

}  // namespace rmt::model
