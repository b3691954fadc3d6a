#include "model/config.hpp"

#include <stdexcept>

namespace rmt::model {

Kind kind_from_string(const std::string& name) {
    if (name == "transformer") return Kind::Transformer;
    if (name == "memtr") return Kind::MemTr;
    if (name == "txl") return Kind::TransformerXL;
    if (name == "rmt") return Kind::RMT;
    if (name == "rmt_encoder") return Kind::RMTEncoder;
    throw std::invalid_argument("kind must be one of 'transformer', 'memtr', 'txl', 'rmt', "
                                "'rmt_encoder'; got '" + name + "'");
}

const char* kind_name(Kind kind) {
    switch (kind) {
        case Kind::Transformer: return "transformer";
        case Kind::MemTr: return "memtr";
        case Kind::TransformerXL: return "txl";
        case Kind::RMT: return "rmt";
        case Kind::RMTEncoder: return "rmt_encoder";
    }
    return "?";
}

namespace {
void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
}
}  // namespace

void ModelConfig::validate() const {
    require(vocab_size >= 1, "vocab_size must be >= 1, got " + std::to_string(vocab_size));
    require(d_model >= 2 && d_model % 2 == 0,
            "d_model must be even and >= 2 (sin/cos halves), got " + std::to_string(d_model));
    require(n_layers >= 1, "n_layers must be >= 1, got " + std::to_string(n_layers));
    require(n_heads >= 1, "n_heads must be >= 1, got " + std::to_string(n_heads));
    require(d_head >= 0, "d_head must be >= 0 (0 = d_model / n_heads), got " + std::to_string(d_head));
    if (d_head == 0)
        require(d_model % n_heads == 0, "n_heads (" + std::to_string(n_heads) +
                                            ") must divide d_model (" + std::to_string(d_model) +
                                            ") unless d_head is given");
    require(d_ff >= 1, "d_ff must be >= 1, got " + std::to_string(d_ff));
    require(segment_len >= 1, "segment_len must be >= 1, got " + std::to_string(segment_len));
    require(num_mem_tokens >= 0, "num_mem_tokens must be >= 0, got " + std::to_string(num_mem_tokens));
    require(mem_len >= 0, "mem_len must be >= 0, got " + std::to_string(mem_len));
    require(clamp_len >= -1, "clamp_len must be -1 (no clamp) or >= 0, got " + std::to_string(clamp_len));
    require(dropout >= 0 && dropout < 1, "dropout must be in [0, 1), got " + std::to_string(dropout));
    require(dropatt >= 0 && dropatt < 1, "dropatt must be in [0, 1), got " + std::to_string(dropatt));
    // Refused rather than ignored: a rate that silently did nothing would be a wrong result.
    require(dropatt == 0, "dropatt > 0 (dropout on attention probabilities) is not implemented yet; use 0");
    require(mem_init == "repeat" || mem_init == "randn",
            "mem_init must be 'repeat' or 'randn', got '" + mem_init + "'");
    require(layer_norm_eps > 0, "layer_norm_eps must be > 0");
    require(init_std > 0, "init_std must be > 0");
    require(num_classes >= 0, "num_classes must be >= 0, got " + std::to_string(num_classes));
    switch (kind) {
        case Kind::Transformer:
            require(num_mem_tokens == 0, "kind 'transformer' has no memory: num_mem_tokens must be 0");
            require(mem_len == 0, "kind 'transformer' has no cache: mem_len must be 0 (use kind 'txl')");
            break;
        case Kind::TransformerXL:
            require(num_mem_tokens == 0, "kind 'txl' has no memory tokens: num_mem_tokens must be 0 "
                                         "(use kind 'rmt' with mem_len > 0 for Tr-XL+RMT)");
            require(mem_len >= 1, "kind 'txl' needs mem_len >= 1");
            break;
        case Kind::MemTr:
            require(num_mem_tokens >= 1, "kind 'memtr' needs num_mem_tokens >= 1");
            require(mem_len == 0, "kind 'memtr' has no cache: mem_len must be 0");
            break;
        case Kind::RMT:
            require(num_mem_tokens >= 1, "kind 'rmt' needs num_mem_tokens >= 1 (M = 0 has no memory)");
            break;
        case Kind::RMTEncoder:
            require(num_mem_tokens >= 1, "kind 'rmt_encoder' needs num_mem_tokens >= 1");
            require(mem_len == 0, "kind 'rmt_encoder' has no cache: mem_len must be 0");
            require(num_classes >= 2, "kind 'rmt_encoder' needs num_classes >= 2, got " +
                                          std::to_string(num_classes));
            for (auto [name, id] : {std::pair<const char*, int64_t>{"cls_id", cls_id},
                                    {"sep_id", sep_id}, {"pad_id", pad_id}})
                require(id >= 0 && id < vocab_size, std::string(name) + " must be in [0, vocab_size = " +
                                                        std::to_string(vocab_size) + "), got " +
                                                        std::to_string(id));
            break;
    }
}

int64_t ModelConfig::query_rows() const {
    switch (kind) {
        case Kind::MemTr: return num_mem_tokens + segment_len;
        case Kind::RMT: return 2 * num_mem_tokens + segment_len;
        case Kind::RMTEncoder: return segment_len + num_mem_tokens + 3;
        default: return segment_len;
    }
}

}  // namespace rmt::model
