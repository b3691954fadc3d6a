#include "kernels/profile.hpp"

#include <array>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace rmt::kernels::profile {

std::atomic<bool> g_enabled{false};

namespace {

// A fixed table, so that a counter never moves while another thread adds to it.
constexpr int kMaxCounters = 512;

struct Counter {
    std::atomic<int64_t> nanoseconds{0};
    std::atomic<int64_t> calls{0};
    std::atomic<double> flops{0.0};
};

struct Registry {
    std::mutex mutex;                       // guards names and size (registration only)
    std::vector<std::string> names;
    std::atomic<int> size{0};
    std::array<Counter, kMaxCounters> counters;
};

Registry& registry() {
    static Registry r;
    return r;
}

}  // namespace

void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }

void reset() {
    auto& r = registry();
    const int n = r.size.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) {
        r.counters[i].nanoseconds.store(0, std::memory_order_relaxed);
        r.counters[i].calls.store(0, std::memory_order_relaxed);
        r.counters[i].flops.store(0.0, std::memory_order_relaxed);
    }
}

int counter_id(const char* name) {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    for (size_t i = 0; i < r.names.size(); ++i)
        if (r.names[i] == name) return int(i);
    if (int(r.names.size()) >= kMaxCounters)
        throw std::length_error("profile: more than 512 counter names");
    r.names.emplace_back(name);
    const int id = int(r.names.size()) - 1;
    r.size.store(id + 1, std::memory_order_release);
    return id;
}

void add(int id, int64_t nanoseconds, double flops) {
    auto& c = registry().counters[id];
    c.nanoseconds.fetch_add(nanoseconds, std::memory_order_relaxed);
    c.calls.fetch_add(1, std::memory_order_relaxed);
    if (flops != 0) {
        double old = c.flops.load(std::memory_order_relaxed);
        while (!c.flops.compare_exchange_weak(old, old + flops, std::memory_order_relaxed)) {
        }
    }
}

std::vector<Record> report() {
    auto& r = registry();
    std::vector<std::string> names;
    {
        std::lock_guard<std::mutex> lock(r.mutex);
        names = r.names;
    }
    std::vector<Record> out;
    for (size_t i = 0; i < names.size(); ++i) {
        const auto& c = r.counters[i];
        const int64_t calls = c.calls.load(std::memory_order_relaxed);
        if (calls == 0) continue;
        Record rec;
        rec.name = names[i];
        rec.seconds = double(c.nanoseconds.load(std::memory_order_relaxed)) * 1e-9;
        rec.calls = calls;
        rec.flops = c.flops.load(std::memory_order_relaxed);
        out.push_back(std::move(rec));
    }
    return out;
}

}  // namespace rmt::kernels::profile
