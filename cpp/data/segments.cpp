#include "data/segments.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace rmt::data {

Align align_from_string(const std::string& name) {
    if (name == "left") return Align::Left;
    if (name == "right") return Align::Right;
    throw std::invalid_argument("align must be 'left' or 'right', got '" + name + "'");
}

const char* align_name(Align align) { return align == Align::Left ? "left" : "right"; }

int64_t SegmentPlan::segments_needed(const std::vector<int64_t>& lengths, int64_t segment_len) {
    int64_t longest = 0;
    for (int64_t n : lengths) longest = std::max(longest, n);
    return (longest + segment_len - 1) / segment_len;
}

SegmentPlan::SegmentPlan(std::vector<int64_t> lengths, int64_t segment_len, Align align,
                         int64_t num_segments)
    : lengths_(std::move(lengths)), segment_len_(segment_len), align_(align) {
    if (segment_len < 1)
        throw std::invalid_argument("segment_len must be >= 1, got " + std::to_string(segment_len));
    if (lengths_.empty()) throw std::invalid_argument("tokens has no rows");
    for (size_t b = 0; b < lengths_.size(); ++b)
        if (lengths_[b] < 0)
            throw std::invalid_argument("tokens row " + std::to_string(b) + " has negative length");
    const int64_t need = segments_needed(lengths_, segment_len);
    if (num_segments < 0) num_segments = need;
    if (num_segments < need)
        throw std::invalid_argument("num_segments = " + std::to_string(num_segments) +
                                    " is too small: the longest row needs " + std::to_string(need) +
                                    " segments of " + std::to_string(segment_len) + " tokens");
    num_segments_ = num_segments;

    const int64_t B = batch(), T = segment_len_;
    slices_.resize(size_t(num_segments_ * B));
    full_.assign(size_t(num_segments_), 1);
    for (int64_t s = 0; s < num_segments_; ++s) {
        const int64_t begin = s * T, end = begin + T;   // columns of the padded layout
        for (int64_t b = 0; b < B; ++b) {
            // Row b occupies padded columns [lead, lead + length).
            const int64_t first = std::max(begin, lead(b));
            const int64_t last = std::min(end, lead(b) + lengths_[b]);
            SegmentSlice& sl = slices_[size_t(s * B + b)];
            sl.valid_len = std::max<int64_t>(0, last - first);
            sl.dest_offset = sl.valid_len ? first - begin : 0;
            sl.source_offset = sl.valid_len ? first - lead(b) : std::clamp<int64_t>(begin - lead(b), 0, lengths_[b]);
            if (sl.valid_len != T || sl.source_offset != slices_[size_t(s * B)].source_offset)
                full_[size_t(s)] = 0;
        }
    }
}

int64_t SegmentPlan::lead(int64_t b) const {
    return align_ == Align::Left ? 0 : num_segments_ * segment_len_ - lengths_[size_t(b)];
}

void gather_segment(const SegmentPlan& plan, int64_t s, const std::vector<RowSource>& rows,
                    size_t itemsize, const void* pad, char* out, int64_t out_row_stride) {
    const int64_t T = plan.segment_len();
    for (int64_t b = 0; b < plan.batch(); ++b) {
        char* dst = out + b * out_row_stride;
        const SegmentSlice& sl = plan.slice(s, b);
        for (int64_t t = 0; t < T; ++t) {
            const bool valid = t >= sl.dest_offset && t < sl.dest_offset + sl.valid_len;
            const char* src = valid ? rows[size_t(b)].data +
                                          (sl.source_offset + t - sl.dest_offset) * rows[size_t(b)].stride
                                    : static_cast<const char*>(pad);
            std::memcpy(dst + t * int64_t(itemsize), src, itemsize);
        }
    }
}

void segment_mask(const SegmentPlan& plan, int64_t s, bool* mask, bool* empty) {
    const int64_t T = plan.segment_len();
    for (int64_t b = 0; b < plan.batch(); ++b) {
        const SegmentSlice& sl = plan.slice(s, b);
        for (int64_t t = 0; t < T; ++t)
            mask[b * T + t] = t >= sl.dest_offset && t < sl.dest_offset + sl.valid_len;
        empty[b] = sl.valid_len == 0;
    }
}

}  // namespace rmt::data
