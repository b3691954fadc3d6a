"""rmt.segments: zero-copy views where no padding is needed, padded layouts (left and right
alignment) built once, masks, empty rows, targets, the sequence protocol, lifetime, bad input,
and streaming a model over it."""
import gc

import numpy as np
import pytest

import rmt


def reference(rows, T, align, pad, S=None):
    """The padded layout (B, S*T) as plain numpy, with its mask."""
    need = max(-(-len(r) // T) for r in rows)
    S = need if S is None else S
    out = np.full((len(rows), S * T), pad, np.int64)
    mask = np.zeros(out.shape, bool)
    for b, r in enumerate(rows):
        cols = slice(0, len(r)) if align == "left" else slice(S * T - len(r), S * T)
        out[b, cols] = r
        mask[b, cols] = True
    return out, mask


def check_against_reference(it, rows, T, align, pad, targets=None, S=None):
    want, want_mask = reference(rows, T, align, pad, S)
    want_targets = None if targets is None else reference(targets, T, align, -100, S)[0]
    assert len(it) == want.shape[1] // T
    for s, seg in enumerate(it):
        cols = slice(s * T, (s + 1) * T)
        assert seg.index == s
        assert seg.tokens.shape == (len(rows), T)
        np.testing.assert_array_equal(seg.tokens, want[:, cols])
        np.testing.assert_array_equal(seg.mask, want_mask[:, cols])
        assert seg.mask.dtype == bool and seg.empty.dtype == bool
        np.testing.assert_array_equal(seg.empty, ~want_mask[:, cols].any(axis=1))
        if targets is None:
            assert seg.targets is None
        else:
            np.testing.assert_array_equal(seg.targets, want_targets[:, cols])


# ---- views of the source when no padding is needed ----

@pytest.mark.parametrize("align", ["left", "right"])
def test_uniform_rows_a_multiple_of_segment_len_are_all_views(align):
    g = np.random.default_rng(0)
    tokens = g.integers(0, 50, (3, 24))
    targets = g.integers(0, 50, (3, 24)).astype(np.int32)
    it = rmt.segments(tokens, 6, align=align, targets=targets)
    assert len(it) == 4
    for s, seg in enumerate(it):
        assert np.shares_memory(seg.tokens, tokens) and np.shares_memory(seg.targets, targets)
        np.testing.assert_array_equal(seg.tokens, tokens[:, s * 6:(s + 1) * 6])
        np.testing.assert_array_equal(seg.targets, targets[:, s * 6:(s + 1) * 6])
        assert seg.tokens.dtype == tokens.dtype and seg.targets.dtype == np.int32
        assert seg.mask.all() and not seg.empty.any()
        assert not seg.tokens.flags.writeable


def test_non_contiguous_source_is_still_viewed():
    base = np.arange(4 * 40).reshape(4, 40)
    tokens = base[::2, ::2]                      # (2, 20), strided both ways
    it = rmt.segments(tokens, 5)
    for s, seg in enumerate(it):
        assert np.shares_memory(seg.tokens, base)
        np.testing.assert_array_equal(seg.tokens, tokens[:, s * 5:(s + 1) * 5])
    reversed_ = base[::-1, ::-1]
    for s, seg in enumerate(rmt.segments(reversed_, 8)):
        assert np.shares_memory(seg.tokens, base)
        np.testing.assert_array_equal(seg.tokens, reversed_[:, s * 8:(s + 1) * 8])
    fortran = np.asfortranarray(np.arange(30).reshape(3, 10))
    for s, seg in enumerate(rmt.segments(fortran, 5)):
        assert np.shares_memory(seg.tokens, fortran)
        np.testing.assert_array_equal(seg.tokens, fortran[:, s * 5:(s + 1) * 5])


# ---- padding ----

@pytest.mark.parametrize("align", ["left", "right"])
def test_uniform_rows_pad_only_the_segment_that_needs_it(align):
    tokens = np.arange(2 * 13).reshape(2, 13) + 1
    targets = tokens + 100
    it = rmt.segments(tokens, 5, align=align, pad_id=0, targets=targets)
    assert len(it) == 3
    check_against_reference(it, list(tokens), 5, align, 0, targets=list(targets))
    padded = 2 if align == "left" else 0
    for seg in it:
        assert np.shares_memory(seg.tokens, tokens) == (seg.index != padded)
        assert np.shares_memory(seg.targets, targets) == (seg.index != padded)
    # The padded segment is built once: two reads are views of the same memory.
    assert np.shares_memory(it[padded].tokens, it[padded].tokens)
    assert it[padded].tokens.base is it[-3 + padded].tokens.base


@pytest.mark.parametrize("align", ["left", "right"])
@pytest.mark.parametrize("num_segments", [None, 5])
def test_rows_of_different_lengths(align, num_segments):
    g = np.random.default_rng(1)
    rows = [g.integers(1, 9, n) for n in (7, 1, 12, 4)]
    targets = [g.integers(0, 9, n) for n in (7, 1, 12, 4)]
    it = rmt.segments(rows, 4, align=align, pad_id=9, targets=targets, num_segments=num_segments)
    assert len(it) == (num_segments or 3) and it.batch_size == 4 and it.segment_len == 4
    assert it.align == align and it.pad_id == 9
    np.testing.assert_array_equal(it.lengths, [7, 1, 12, 4])
    check_against_reference(it, rows, 4, align, 9, targets=targets, S=num_segments)
    # One padded buffer built at construction, every segment a view of it.
    for seg in it:
        assert seg.tokens.base is it[0].tokens.base
        assert not any(np.shares_memory(seg.tokens, r) for r in rows)
    # Empty rows: the short row's leading (right) or trailing (left) segments.
    empties = np.array([seg.empty for seg in it])
    if align == "right":
        assert empties[:-1, 1].all() and not empties[-1].any()
    else:
        assert empties[1:, 1].all() and not empties[0].any()


@pytest.mark.parametrize("align", ["left", "right"])
def test_a_row_of_length_zero_is_empty_in_every_segment(align):
    rows = [[1, 2, 3, 4, 5], []]
    it = rmt.segments(rows, 2, align=align, pad_id=7, targets=[[0, 1, 2, 3, 4], []])
    check_against_reference(it, [np.array(r) for r in rows], 2, align, 7,
                            targets=[np.arange(5), np.array([], np.int64)])
    assert all(seg.empty[1] and not seg.empty[0] for seg in it)


def test_right_aligned_segments_equal_right_align():
    g = np.random.default_rng(2)
    rows = [g.integers(3, 20, n) for n in (12, 5, 3, 9)]
    for S in (None, 4):
        want = rmt.right_align(rows, segment_len=5, pad_id=1, num_segments=S)
        got = np.concatenate([s.tokens for s in rmt.segments(rows, 5, align="right", pad_id=1,
                                                              num_segments=S)], axis=1)
        np.testing.assert_array_equal(got, want)


def test_dtypes_are_kept_and_mixed_rows_become_int64():
    tokens = np.arange(14, dtype=np.uint8).reshape(2, 7)
    seg = rmt.segments(tokens, 4, pad_id=255)[-1]
    assert seg.tokens.dtype == np.uint8
    np.testing.assert_array_equal(seg.tokens, [[4, 5, 6, 255], [11, 12, 13, 255]])
    mixed = rmt.segments([np.arange(3, dtype=np.int16), [4, 5]], 2)
    assert mixed[0].tokens.dtype == np.int64
    np.testing.assert_array_equal(mixed[1].tokens, [[2, 0], [0, 0]])
    same = rmt.segments([np.arange(3, dtype=np.int16), np.arange(2, dtype=np.int16)], 2)
    assert same[0].tokens.dtype == np.int16


# ---- the sequence protocol and lifetime ----

def test_len_getitem_negative_index_and_out_of_range():
    tokens = np.arange(20).reshape(2, 10)
    it = rmt.segments(tokens, 4)
    assert len(it) == 3
    np.testing.assert_array_equal(it[-1].tokens, it[2].tokens)
    np.testing.assert_array_equal(it[-3].tokens, tokens[:, :4])
    assert it[-1].index == 2
    for bad in (3, -4, 100):
        with pytest.raises(IndexError, match="out of range"):
            it[bad]
    # Every for-loop is a new pass; next() advances the object's own cursor.
    first = [s.index for s in it]
    assert first == [s.index for s in it] == [0, 1, 2]
    assert next(it).index == 0 and next(it).index == 1 and next(it).index == 2
    with pytest.raises(StopIteration):
        next(it)
    p = iter(it)
    assert iter(p) is p and p is not it
    assert [s.index for s in list(zip(*[iter(it)] * 3))[0]] == [0, 1, 2]
    assert next(p).index == 0 and [s.index for s in p] == [1, 2]


def test_source_and_views_outlive_their_references():
    it = rmt.segments(np.arange(3 * 11).reshape(3, 11), 4, targets=np.arange(3 * 11).reshape(3, 11))
    rows = rmt.segments([np.arange(5), np.arange(2)], 3, align="right")
    gc.collect()
    np.testing.assert_array_equal(np.concatenate([s.tokens for s in it], axis=1)[:, :11],
                                  np.arange(33).reshape(3, 11))
    seg = it[0]
    views = [s.tokens for s in rows]
    del it, rows
    gc.collect()
    np.testing.assert_array_equal(seg.tokens, [[0, 1, 2, 3], [11, 12, 13, 14], [22, 23, 24, 25]])
    np.testing.assert_array_equal(np.concatenate(views, axis=1), [[0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 0, 1]])


# ---- bad input ----

def test_bad_input_names_the_argument():
    tokens = np.zeros((2, 8), np.int64)
    cases = [
        (TypeError, "tokens", dict(tokens=tokens.astype(np.float32))),
        (TypeError, "tokens", dict(tokens=tokens.astype(bool))),
        (ValueError, "tokens", dict(tokens=np.zeros((2, 2, 2), np.int64))),
        (ValueError, "tokens", dict(tokens=np.zeros(8, np.int64))),
        (ValueError, "tokens", dict(tokens=np.zeros((2, 0), np.int64))),
        (ValueError, "tokens", dict(tokens=[])),
        (ValueError, "tokens", dict(tokens=[[], []])),
        (TypeError, "tokens", dict(tokens="abc")),
        (TypeError, r"tokens\[1\]", dict(tokens=[np.arange(3), np.array([1.5])])),
        (ValueError, r"tokens\[0\]", dict(tokens=[np.zeros((2, 2), np.int64)])),
        (ValueError, "segment_len", dict(segment_len=0)),
        (ValueError, "segment_len", dict(segment_len=-3)),
        (TypeError, "segment_len", dict(segment_len=2.5)),
        (ValueError, "align", dict(align="center")),
        (ValueError, "num_segments", dict(num_segments=1)),
        (ValueError, "num_segments", dict(num_segments=0)),
        (TypeError, "pad_id", dict(pad_id="x")),
        (ValueError, "pad_id", dict(pad_id=2 ** 70)),
        (ValueError, "pad_id", dict(tokens=tokens.astype(np.uint8), pad_id=256)),
        (TypeError, "targets", dict(targets=np.zeros((2, 8), np.float64))),
        (ValueError, "targets", dict(targets=np.zeros((2, 7), np.int64))),
        (ValueError, "targets", dict(targets=np.zeros((3, 8), np.int64))),
        (TypeError, "targets", dict(targets=[np.zeros(8, np.int64)] * 2)),
        (ValueError, "targets", dict(targets=np.zeros((2, 8), np.uint8))),   # -100 does not fit
    ]
    for exc, name, kw in cases:
        args = {"tokens": tokens, "segment_len": 3, **kw}
        with pytest.raises(exc, match=name):
            rmt.segments(**args)
    with pytest.raises(ValueError, match="targets row 1"):
        rmt.segments([np.arange(3), np.arange(4)], 2, targets=[np.arange(3), np.arange(5)])


# ---- models over segments ----

SMALL = dict(vocab_size=12, d_model=16, n_layers=2, n_heads=2, d_ff=32, segment_len=6, dropout=0.0)


@pytest.mark.parametrize("cls,extra", [(rmt.TransformerXL, {"mem_len": 6}), (rmt.RMT, {"num_mem_tokens": 2})])
def test_streaming_over_segments_equals_the_whole_sequence(cls, extra):
    model = cls(rmt.ModelConfig(**SMALL, **extra)).eval()
    tokens = np.random.default_rng(3).integers(0, 12, (2, 24))
    whole = model(tokens)
    streamed = np.concatenate(list(model.stream(rmt.segments(tokens, 6))), axis=1)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-5)
    # A length that is not a multiple: the last segment padded at its end; causal attention keeps
    # the padding invisible to the real positions.
    short = tokens[:, :21]
    streamed = np.concatenate(list(model.stream(rmt.segments(short, 6, pad_id=5))), axis=1)
    padded = np.concatenate([short, np.full((2, 3), 5)], axis=1)
    np.testing.assert_allclose(streamed[:, :21], model(padded)[:, :21], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(streamed[:, :18], whole[:, :18], rtol=1e-5, atol=1e-5)


def test_encoder_streams_right_aligned_segments():
    model = rmt.RMTEncoder(rmt.ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                           segment_len=5, num_mem_tokens=2, num_classes=3,
                                           dropout=0.0)).eval()
    g = np.random.default_rng(4)
    rows = [g.integers(3, 20, n) for n in (12, 5, 3, 9)]
    last = list(model.stream(rmt.segments(rows, 5, align="right")))[-1]
    np.testing.assert_allclose(last, model(rmt.right_align(rows, 5)), rtol=1e-5, atol=1e-5)
