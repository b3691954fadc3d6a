"""Data: segments of long sequences (below), and language-modelling corpora (``ByteCorpus``,
``WordCorpus``, ``default_corpus``, ``bits_per_byte``, ``perplexity``: see ``rmt.corpus``).

Segments: a batch of long token sequences cut into (batch, segment_len) pieces without copies.

    for seg in rmt.segments(tokens, segment_len=24):           # tokens (B, L), any integer dtype
        logits, state = model.step(seg.tokens, state)           # or: model.stream(rmt.segments(...))

``rmt.segments`` returns a C++ ``rmt._core.SegmentIterator`` of ``rmt._core.Segment`` objects:

- ``seg.tokens`` (B, T): a read-only numpy view. A segment every row fills is a view of YOUR
  array (``np.shares_memory(seg.tokens, tokens)`` holds); the segments that need padding (the
  last one, left-aligned; the first, right-aligned; all of them when rows differ in length) are
  views of a padded buffer the iterator builds ONCE at construction. Nothing is copied per item.
- ``seg.targets`` (B, T) or None: the same for ``targets``, with -100 (the ignore index) on padding.
- ``seg.mask`` (B, T) bool: the valid (non-padding) positions.
- ``seg.empty`` (B,) bool: rows with no valid token in this segment (the leading segments of a
  short row, right-aligned; the trailing ones, left-aligned).
- ``seg.index``: the segment's position.

Alignment:

- ``align="left"``: every row starts at column 0 of segment 0; the segment holding a row's last
  token is padded at its end (with ``pad_id``), later segments of that row are empty.
- ``align="right"``: every row ends on the last column of the last segment; shorter rows get
  leading padding and leading empty segments. This is the RMT encoder's input layout:
  concatenating the segments gives exactly ``rmt.right_align(samples, segment_len, pad_id)``.

``num_segments`` defaults to what the longest row needs (ceil(L / segment_len)); a larger value
adds empty segments (at the end left-aligned, at the front right-aligned); a smaller one raises.

``tokens`` is a 2-D integer array (B, L), or a list of 1-D integer arrays of different lengths
(copied once into one padded (B, num_segments * segment_len) buffer of their common dtype, int64
if they differ). ``targets``, if given, has the same form and row lengths.

The iterator is a sequence: ``len(it)``, ``it[i]`` (negative i counts from the end; out of range
raises IndexError), and every ``iter(it)`` (every ``for`` loop) is a new pass over the same
buffers (an iterator proper: ``iter(p) is p``); ``next(it)`` advances the object's own cursor. It keeps the arrays it reads alive, so
the caller may drop its references. Its views stay valid after the iterator itself is gone.
Bad arguments raise TypeError / ValueError naming the argument.
"""
from __future__ import annotations

from typing import Optional

from . import _core

Segment = _core.Segment
SegmentIterator = _core.SegmentIterator


def segments(tokens, segment_len: int, align: str = "left", pad_id: int = 0, targets=None,
             num_segments: Optional[int] = None) -> SegmentIterator:
    """Cuts ``tokens`` (B, L) (or a list of 1-D arrays) into ``num_segments`` segments
    (B, segment_len) of views, padded with ``pad_id`` (tokens) and -100 (targets) as ``align``
    ("left" or "right") requires. See the module docstring (``rmt.data``) for the details."""
    return _core.SegmentIterator(tokens, segment_len, align=align, pad_id=pad_id, targets=targets,
                                 num_segments=num_segments)


from .corpus import (  # noqa: E402  (language-modelling data, see rmt.corpus)
    ByteCorpus,
    WordCorpus,
    bits_per_byte,
    default_corpus,
    default_corpus_novels,
    perplexity,
)
