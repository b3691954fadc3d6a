// The configuration of a model: plain data, validated once (docs/MODELS.md is the contract).
#pragma once
#include <cstdint>
#include <string>

namespace rmt::model {

enum class Kind { Transformer, MemTr, TransformerXL, RMT, RMTEncoder };

Kind kind_from_string(const std::string& name);   // throws std::invalid_argument
const char* kind_name(Kind kind);

struct ModelConfig {
    Kind kind = Kind::RMT;
    int64_t vocab_size = 0;
    int64_t d_model = 0;
    int64_t n_layers = 0;
    int64_t n_heads = 0;
    int64_t d_head = 0;          // 0: d_model / n_heads
    int64_t d_ff = 0;
    int64_t segment_len = 0;
    int64_t num_mem_tokens = 0;
    int64_t mem_len = 0;         // Transformer-XL cache (txl; rmt: Tr-XL+RMT)
    int64_t clamp_len = -1;      // -1: no clamp
    bool same_length = false;    // eval mode only
    bool untie_rel_bias = false;
    double dropout = 0.1;
    double dropatt = 0.0;
    std::string mem_init = "randn";    // "randn" (HF wrapper) or "repeat" (LM-RMT); docs/MODELS.md
    double layer_norm_eps = 1e-5;
    double init_std = 0.02;
    // rmt_encoder only (ignored by the decoders): classes of the head and the special ids.
    int64_t num_classes = 0;
    int64_t cls_id = 1;
    int64_t sep_id = 2;
    int64_t pad_id = 0;

    // Throws std::invalid_argument naming the first bad field (or bad combination).
    void validate() const;

    int64_t head_size() const { return d_head > 0 ? d_head : d_model / n_heads; }
    int64_t attn_dim() const { return n_heads * head_size(); }   // D
    bool has_memory() const { return kind == Kind::MemTr || kind == Kind::RMT || kind == Kind::RMTEncoder; }
    bool recurrent_memory() const { return kind == Kind::RMT || kind == Kind::RMTEncoder; }
    bool has_cache() const { return mem_len > 0 && (kind == Kind::TransformerXL || kind == Kind::RMT); }
    // Rows of one segment's layer input: [mem_read; x; mem_write] for rmt, [mem; x] for memtr,
    // [CLS; mem; SEP; x; SEP] for rmt_encoder.
    int64_t query_rows() const;
    int64_t token_row_offset() const {
        if (kind == Kind::RMTEncoder) return num_mem_tokens + 2;
        return has_memory() ? num_mem_tokens : 0;
    }
};

}  // namespace rmt::model
