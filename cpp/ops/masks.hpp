// The attention masks of the model kinds (1 = may attend), as dense (Tq, Tk) uint8 arrays.
#pragma once
#include <cstdint>

namespace rmt::ops {

// Causal with a cache: Tq queries after `cache` cached positions; query i sees key j iff
// j <= cache + i. same_length_window > 0 is Transformer-XL's same_length (evaluation): query i
// then sees only the last `window` keys ending at itself, cache + i - window < j <= cache + i,
// so every query sees the same number of keys (kimiyoung passes window = mem_len, and applies
// it only when cache + Tq > mem_len). allowed (Tq, cache + Tq)
void causal_mask(uint8_t* allowed, int64_t Tq, int64_t cache, int64_t same_length_window);

// RMT decoder (P1 section 3) over [cache; mem_read (M); x (T); mem_write (M)]: read rows see the
// cache and the read block; token rows see the cache, the read block and the causal past; write
// rows see everything. allowed (2M + T, cache + 2M + T)
void rmt_decoder_mask(uint8_t* allowed, int64_t M, int64_t T, int64_t cache);

// Bidirectional with padding: key j is visible to every query iff j < length. allowed (Tq, Tk)
void padding_mask(uint8_t* allowed, int64_t Tq, int64_t Tk, int64_t length);

}  // namespace rmt::ops
