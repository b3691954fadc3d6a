// A low-overhead per-op profiler: named counters (seconds, calls, FLOPs) filled by RAII scope
// timers, for the question "where does a training step spend its time?".
//
//     RMT_PROFILE_SCOPE("fwd.linear.qkv");                 // times the rest of the block
//     RMT_PROFILE_SCOPE_FLOPS("fwd.linear.o", 2.0 * N * D * C);
//
// Off by default; enabled at run time (set_enabled, or rmt.profile() in Python). Disabled, a
// scope costs one relaxed atomic load and a branch: the call site is a constant-initialised
// static (no guard), registered by name on its first enabled use.
//
// Threads: a scope times the thread that opens it, in wall-clock time, including any OpenMP
// parallel region the op runs inside. The model code opens scopes on the calling (master)
// thread around whole op calls, outside parallel regions, except in the encoder's stream step:
// there each thread runs its share of the batch (Model::encoder_step) and opens its own scopes.
// The counters are relaxed atomics, so those, like concurrent model calls from several Python
// threads, add up without tearing (their times then overlap). Scopes are meant to be leaves: a scope opened inside another one is
// counted in both, so the sum over counters is only the covered time when they do not nest.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace rmt::kernels::profile {

extern std::atomic<bool> g_enabled;

inline bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
void set_enabled(bool on);
// Zeroes every counter (the names stay registered).
void reset();

// The id of the counter `name` (registered on first use; the same name always gives the same id).
int counter_id(const char* name);
void add(int id, int64_t nanoseconds, double flops);

struct Record {
    std::string name;
    double seconds = 0;
    int64_t calls = 0;
    double flops = 0;   // 0 when the scope does not count them
};
// Every counter with at least one call since the last reset, in registration order.
std::vector<Record> report();

// One call site: its name and, once registered, its counter id.
struct Site {
    const char* name;
    std::atomic<int> id;
    constexpr explicit Site(const char* n) : name(n), id(-1) {}
    int get() {
        int i = id.load(std::memory_order_relaxed);
        if (i < 0) {
            i = counter_id(name);
            id.store(i, std::memory_order_relaxed);
        }
        return i;
    }
};

class Scope {
public:
    using clock = std::chrono::steady_clock;
    explicit Scope(Site& site, double flops = 0) : site_(enabled() ? &site : nullptr) {
        if (site_) {
            flops_ = flops;
            start_ = clock::now();
        }
    }
    ~Scope() {
        if (site_) {
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start_);
            add(site_->get(), int64_t(ns.count()), flops_);
        }
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

private:
    Site* site_;
    double flops_ = 0;
    clock::time_point start_{};
};

}  // namespace rmt::kernels::profile

#define RMT_PROFILE_CAT2(a, b) a##b
#define RMT_PROFILE_CAT(a, b) RMT_PROFILE_CAT2(a, b)
// Times the enclosing block under `name` (a string literal). The FLOPs expression of
// RMT_PROFILE_SCOPE_FLOPS is evaluated on every call, enabled or not: keep it to a few integer
// multiplications.
#define RMT_PROFILE_SCOPE(name)                                                           \
    static ::rmt::kernels::profile::Site RMT_PROFILE_CAT(rmt_profile_site_, __LINE__){name}; \
    ::rmt::kernels::profile::Scope RMT_PROFILE_CAT(rmt_profile_scope_, __LINE__)(         \
        RMT_PROFILE_CAT(rmt_profile_site_, __LINE__))
#define RMT_PROFILE_SCOPE_FLOPS(name, flops)                                              \
    static ::rmt::kernels::profile::Site RMT_PROFILE_CAT(rmt_profile_site_, __LINE__){name}; \
    ::rmt::kernels::profile::Scope RMT_PROFILE_CAT(rmt_profile_scope_, __LINE__)(         \
        RMT_PROFILE_CAT(rmt_profile_site_, __LINE__), double(flops))
