// Segment plans: how a batch of token sequences of (possibly) different lengths is cut into
// segments of segment_len tokens, without looking at the tokens themselves.
//
//   align Left : every row starts at column 0 of segment 0; the segment holding a row's last
//                token is padded at its end, later segments of that row are empty.
//   align Right: every row ends on the last column of the last segment (the RMT encoder's
//                layout, rmt.right_align); shorter rows get leading padding and leading empty
//                segments.
//
// A plan only knows lengths; gather_segment() applies it to bytes, so one plan serves tokens and
// targets of any integer dtype. Plain C++: no Python here (the bindings own the arrays).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rmt::data {

enum class Align { Left, Right };

Align align_from_string(const std::string& name);   // "left" / "right"; std::invalid_argument
const char* align_name(Align align);

// Where segment s of row b comes from. Columns [dest_offset, dest_offset + valid_len) of the
// segment hold the row's tokens [source_offset, source_offset + valid_len); the rest is padding.
struct SegmentSlice {
    int64_t source_offset = 0;
    int64_t valid_len = 0;      // 0: the row has no token in this segment (an empty row)
    int64_t dest_offset = 0;
};

class SegmentPlan {
public:
    // num_segments < 0: as many as the longest row needs. Throws std::invalid_argument (the
    // message names the argument) for segment_len < 1, negative lengths, no rows, or a
    // num_segments smaller than the longest row needs.
    SegmentPlan(std::vector<int64_t> lengths, int64_t segment_len, Align align,
                int64_t num_segments = -1);

    // ceil(max length / segment_len): the fewest segments that hold every row.
    static int64_t segments_needed(const std::vector<int64_t>& lengths, int64_t segment_len);

    int64_t batch() const { return int64_t(lengths_.size()); }
    int64_t segment_len() const { return segment_len_; }
    int64_t num_segments() const { return num_segments_; }
    Align align() const { return align_; }
    const std::vector<int64_t>& lengths() const { return lengths_; }

    // (segment s, row b), s in [0, num_segments), b in [0, batch).
    const SegmentSlice& slice(int64_t s, int64_t b) const { return slices_[size_t(s * batch() + b)]; }

    // Every row fills segment s and all rows start at the same source offset: the segment is a
    // rectangular window of a 2-D source of equal-length rows (a view, no padding).
    bool is_full(int64_t s) const { return full_[size_t(s)] != 0; }

    // Column of the padded layout (batch, num_segments * segment_len) where row b's token 0 lies.
    int64_t lead(int64_t b) const;

private:
    std::vector<int64_t> lengths_;
    int64_t segment_len_;
    int64_t num_segments_;
    Align align_;
    std::vector<SegmentSlice> slices_;   // (num_segments, batch)
    std::vector<char> full_;             // (num_segments,)
};

// One source row of `itemsize`-byte elements: element i at data + i * stride (bytes).
struct RowSource {
    const char* data;
    int64_t stride;
};

// Writes segment s as a (batch, segment_len) block at `out` (row b at out + b * out_row_stride
// bytes, columns contiguous): each row's valid elements at their columns, the `itemsize` bytes
// of `pad` everywhere else. rows.size() == plan.batch().
void gather_segment(const SegmentPlan& plan, int64_t s, const std::vector<RowSource>& rows,
                    size_t itemsize, const void* pad, char* out, int64_t out_row_stride);

// Valid positions of segment s: mask (batch, segment_len) and empty (batch,) (no valid column).
void segment_mask(const SegmentPlan& plan, int64_t s, bool* mask, bool* empty);

}  // namespace rmt::data
