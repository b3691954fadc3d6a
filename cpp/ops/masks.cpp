#include "ops/masks.hpp"

namespace rmt::ops {

void causal_mask(uint8_t* allowed, int64_t Tq, int64_t cache, int64_t same_length_window) {
    const int64_t Tk = cache + Tq;
    for (int64_t i = 0; i < Tq; ++i) {
        const int64_t last = cache + i;   // query i sits at key position cache + i
        const int64_t first = same_length_window > 0 ? last - same_length_window + 1 : 0;
        for (int64_t j = 0; j < Tk; ++j) allowed[i * Tk + j] = j >= first && j <= last;
    }
}

void rmt_decoder_mask(uint8_t* allowed, int64_t M, int64_t T, int64_t cache) {
    // Keys: [cache; mem_read (M); x (T); mem_write (M)]; queries: the last 2M + T of them.
    const int64_t Q = 2 * M + T, K = cache + Q;
    const int64_t read_end = cache + M;   // keys [0, read_end): the cache and the read block
    for (int64_t i = 0; i < Q; ++i) {
        uint8_t* row = allowed + i * K;
        for (int64_t j = 0; j < K; ++j) {
            bool ok;
            if (i < M) ok = j < read_end;                          // read memory
            else if (i < M + T) ok = j < read_end || j <= cache + i;   // tokens: causal past
            else ok = true;                                        // write memory: everything
            row[j] = ok;
        }
    }
}

void padding_mask(uint8_t* allowed, int64_t Tq, int64_t Tk, int64_t length) {
    for (int64_t i = 0; i < Tq; ++i)
        for (int64_t j = 0; j < Tk; ++j) allowed[i * Tk + j] = j < length;
}

}  // namespace rmt::ops
