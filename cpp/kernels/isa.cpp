#include "kernels/isa.hpp"

#include <stdexcept>
#include <xsimd/xsimd.hpp>

namespace rmt::kernels {
namespace {

bool cpu_has_avx512() {
    auto arch = xsimd::available_architectures();
    return arch.avx512f && arch.avx512dq && arch.avx512bw;
}
bool cpu_has_avx2() {
    auto arch = xsimd::available_architectures();
    return arch.fma3_avx2 && arch.avx2;
}

const KernelTable* best_table() {
    if (cpu_has_avx512()) return &avx512_table();
    if (cpu_has_avx2()) return &avx2_table();
    return &scalar_table();
}

const KernelTable*& active_table() {
    static const KernelTable* table = best_table();
    return table;
}

}  // namespace

const KernelTable& active() { return *active_table(); }

std::vector<std::string> available_isas() {
    std::vector<std::string> names;
    if (cpu_has_avx512()) names.push_back("avx512");
    if (cpu_has_avx2()) names.push_back("avx2");
    names.push_back("scalar");
    return names;
}

std::string current_isa() { return active().name; }

void set_isa(const std::string& name) {
    const KernelTable* table = nullptr;
    if (name == "avx512" && cpu_has_avx512()) table = &avx512_table();
    else if (name == "avx2" && cpu_has_avx2()) table = &avx2_table();
    else if (name == "scalar") table = &scalar_table();
    else if (name == "best") table = best_table();
    if (!table) {
        std::string msg = "isa '" + name + "' is not available on this CPU; available:";
        for (auto& n : available_isas()) msg += " " + n;
        throw std::invalid_argument(msg);
    }
    active_table() = table;
}

}  // namespace rmt::kernels
