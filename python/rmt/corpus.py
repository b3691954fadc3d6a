"""Language-modelling data: enwik8-format bytes, WikiText-format words, and a default corpus of
real English prose that is on disk with no download (re-exported by ``rmt.data``).

    text = rmt.data.default_corpus()                  # Jane Austen's six novels, about 4 MB
    corpus = rmt.data.ByteCorpus(text)                # or ByteCorpus("enwik8") / ("enwik8.zip")
    train = corpus.lm_batches("train", batch_size=16, segment_len=128, num_segments=4, seed=0)
    trainer.fit(train, steps=1000, eval_data=corpus.eval_batches("valid", 16, 128, 4, max_windows=64))
    print(rmt.data.bits_per_byte(rmt.evaluate(model, corpus.eval_batches("test", 16, 128, 4))["loss"]))

- ``ByteCorpus(path | str | bytes)``: raw bytes, vocab 256 (enwik8 format). Splits: the first
  90% train, next 5% valid, last 5% test, which is exactly the standard 90M / 5M / 5M of enwik8.
- ``WordCorpus(dir | path to wiki.train.tokens)``: WikiText format (wiki.{train,valid,test}.tokens,
  space-separated tokens, ``<eos>`` appended to every line, ``<unk>`` kept as a word); the
  vocabulary is built from train, most frequent first, ``<eos>`` = 0. ``WordCorpus.from_text``
  splits raw text into words and punctuation the same way (e.g. the default corpus).
- Both: ``train`` / ``valid`` / ``test`` 1-D token arrays, ``vocab_size``, ``encode`` / ``decode``,
  ``lm_batches`` (a callable step -> batch for ``rmt.Trainer.fit``: random contiguous windows of
  S * T + 1 tokens, a pure function of (seed, step), so a resumed run sees the same batches) and
  ``eval_batches`` (a list of batches of consecutive non-overlapping windows that covers the split:
  every token but the first is a target exactly once; the tail window is padded with target -100).
  Each batch row is one window; its segments carry memory, rows and batches are independent.

The default corpus comes from the Debian package ``r-cran-janeaustenr`` (Jane Austen's complete
novels, public domain; installed by scripts/install-system-deps.sh). It is read straight from the R
package's lazy-load database in pure Python: R itself is never run.
"""
from __future__ import annotations

import array
import functools
import gzip
import math
import os
import re
import struct
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

IGNORE = -100

# ----------------------------------------------------------------------------------------------
# metrics


def bits_per_byte(mean_loss: float) -> float:
    """Bits per byte (bpc on enwik8) from a mean cross-entropy in nats per byte token."""
    return float(mean_loss) / math.log(2.0)


def perplexity(mean_loss: float) -> float:
    """Perplexity from a mean cross-entropy in nats per token (word-level corpora)."""
    return float(math.exp(mean_loss))


# ----------------------------------------------------------------------------------------------
# the default corpus: Jane Austen's novels from the Debian package r-cran-janeaustenr

DEFAULT_CORPUS_PACKAGE = "r-cran-janeaustenr"
# Publication order; the names are the R objects in the package.
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                 "northangerabbey", "persuasion")
_R_LIBRARIES = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library",
                "/usr/local/lib/R/library")


def _find_janeaustenr() -> Path:
    dirs = [d for d in os.environ.get("R_LIBS", "").split(os.pathsep) if d]
    dirs += [d for d in os.environ.get("R_LIBS_SITE", "").split(os.pathsep) if d]
    dirs += list(_R_LIBRARIES)
    for d in dirs:
        base = Path(d) / "janeaustenr" / "data" / "Rdata"
        if base.with_suffix(".rdx").is_file() and base.with_suffix(".rdb").is_file():
            return base
    raise FileNotFoundError(
        f"the default corpus comes from the Debian package {DEFAULT_CORPUS_PACKAGE} (Jane Austen's "
        f"novels), which is not installed (looked in {', '.join(dirs)}): run "
        f"`apt-get install --no-install-recommends {DEFAULT_CORPUS_PACKAGE}` or "
        "`bash scripts/install-system-deps.sh`, or pass your own text/file to ByteCorpus/WordCorpus")


class _RReader:
    """Just enough of R's XDR serialization format (R Internals, 'Serialization formats') for
    character vectors, integer/real vectors, lists, pairlists and symbols."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []
        if data[:2] != b"X\n":
            raise ValueError("not an R XDR serialization stream")
        self.pos = 2
        version = self.int()
        self.int(), self.int()
        if version == 3:
            n = self.int()  # then the native encoding's name
            self.pos += n

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def chars(self, flags: int) -> Optional[str]:
        n = self.int()
        if n == -1:
            return None
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        if (flags >> 12) & 4:  # LATIN1_MASK
            return raw.decode("latin-1")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254 or kind in (242, 253, 251):  # NULL, empty/global env, missing arg
            return None
        if kind == 255:  # reference
            return self.refs[(flags >> 8) - 1]
        if kind == 1:  # symbol
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 9:
            return self.chars(flags)
        if kind in (2, 4, 5, 6, 17):  # pairlist-like: attr, tag, car, cdr
            out = {}
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag if tag is not None else len(out)] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
                if kind == 254:
                    return out
                if kind != 2:
                    raise ValueError(f"unsupported R pairlist tail of type {kind}")
        if kind in (10, 13):
            n = self.length()
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == 14:
            n = self.length()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind == 16:
            value = []
            for _ in range(self.length()):
                value.append(self.chars(self.int()))
        elif kind in (19, 20):
            value = [self.item() for _ in range(self.length())]
        else:
            raise ValueError(f"unsupported R object type {kind}")
        if has_attr:
            attrs = self.item()
            names = attrs.get("names") if isinstance(attrs, dict) else None
            if names is not None and isinstance(value, list) and len(names) == len(value):
                value = dict(zip(names, value))
        return value


def _read_lazyload(base: Path) -> Dict[str, object]:
    """Every object of an R lazy-load database (base.rdx index + base.rdb values)."""
    index = _RReader(gzip.decompress(base.with_suffix(".rdx").read_bytes())).item()
    db = base.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, size) in index["variables"].items():
        blob = db[int(offset):int(offset) + int(size)]
        expected = struct.unpack(">I", blob[:4])[0]
        if blob[4:5] in (b"Z", b"2", b"X", b"0"):  # typed compression (R >= 2.10)
            kind, payload = blob[4:5], blob[5:]
            if kind == b"Z":
                raw = zlib.decompress(payload)
            elif kind == b"2":
                import bz2
                raw = bz2.decompress(payload)
            elif kind == b"X":
                import lzma
                raw = lzma.decompress(payload)
            else:
                raw = payload
        else:
            raw = zlib.decompress(blob[4:])
        if len(raw) != expected:
            raise ValueError(f"{base}.rdb: object {name!r} is corrupt")
        out[name] = _RReader(raw).item()
    return out


def _clean_novel(lines: Sequence[Optional[str]]) -> str:
    """Joins the lines of one novel; strips Project Gutenberg's _italics_ underscores and the
    licence header/footer if present, and collapses runs of blank lines to one."""
    text = "\n".join(line if line is not None else "" for line in lines)
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", text)
    if start:
        text = text[start.end():]
    end = re.search(r"\n[^\n]*\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    if end:
        text = text[:end.start()]
    text = re.sub(r"(?<!\w)_([^_\n]+(?:\n[^_\n]+)*)_(?!\w)", r"\1", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


@functools.lru_cache(maxsize=1)
def default_corpus_novels() -> Dict[str, str]:
    """{R name: cleaned text} of Jane Austen's six novels (from r-cran-janeaustenr), in
    publication order. Raises FileNotFoundError naming the package if it is not installed."""
    objects = _read_lazyload(_find_janeaustenr())
    missing = [n for n in AUSTEN_NOVELS if n not in objects]
    if missing:
        raise ValueError(f"{DEFAULT_CORPUS_PACKAGE}: novels {missing} not found in its data")
    return {name: _clean_novel(objects[name]) for name in AUSTEN_NOVELS}


def default_corpus() -> str:
    """The default LM corpus: Jane Austen's six novels (Sense and Sensibility ... Persuasion),
    about 4 MB of public-domain English prose, from the Debian package r-cran-janeaustenr (read
    offline; no download). Raises FileNotFoundError naming the package if it is not installed."""
    return "\n\n".join(default_corpus_novels().values())


# ----------------------------------------------------------------------------------------------
# corpora


SPLITS = ("train", "valid", "test")


class _Corpus:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def _window(self, split: str, segment_len: int, num_segments: int) -> tuple:
        for arg, v in (("segment_len", segment_len), ("num_segments", num_segments)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {v!r}")
        data = self.split(split)
        length = int(segment_len) * int(num_segments)
        return data, length

    def lm_batches(self, split: str = "train", batch_size: int = 16, segment_len: int = 128,
                   num_segments: int = 1, seed: int = 0):
        """A callable ``step -> {tokens, targets}`` of shape (batch_size, num_segments *
        segment_len) int64: each row a random contiguous window of S * T + 1 tokens of ``split``
        (tokens = window[:-1], targets = window[1:]), drawn from ``(seed, step)`` alone."""
        data, length = self._window(split, segment_len, num_segments)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if len(data) < length + 1:
            raise ValueError(f"segment_len * num_segments + 1 = {length + 1} tokens is longer than "
                             f"the {split!r} split ({len(data)} tokens)")
        high = len(data) - length  # starts in [0, high)
        offsets = np.arange(length + 1)

        def batch(step: int) -> Dict[str, np.ndarray]:
            rng = np.random.default_rng([int(seed), int(step)])
            starts = rng.integers(0, high, size=int(batch_size))
            window = data[starts[:, None] + offsets].astype(np.int64)
            return {"tokens": window[:, :-1], "targets": window[:, 1:]}

        return batch

    def eval_batches(self, split: str = "valid", batch_size: int = 16, segment_len: int = 128,
                     num_segments: int = 1, max_windows: Optional[int] = None
                     ) -> List[Dict[str, np.ndarray]]:
        """Consecutive non-overlapping windows of S * T inputs (targets shifted by one) over
        ``split``, ``batch_size`` windows a batch (the last batch may have fewer rows): every token
        but the first is a target exactly once; the last window is padded (token 0, target
        -100). ``max_windows`` keeps only the first windows (a quick validation)."""
        data, length = self._window(split, segment_len, num_segments)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if len(data) < 2:
            raise ValueError(f"the {split!r} split has {len(data)} tokens; evaluation needs 2")
        n_windows = -(-(len(data) - 1) // length)
        if max_windows is not None:
            if max_windows < 1:
                raise ValueError(f"max_windows must be >= 1, got {max_windows!r}")
            n_windows = min(n_windows, int(max_windows))
        tokens = np.zeros(n_windows * length, np.int64)
        targets = np.full(n_windows * length, IGNORE, np.int64)
        n_in = min(len(data) - 1, n_windows * length)
        tokens[:n_in] = data[:n_in]
        targets[:n_in] = data[1:n_in + 1]
        tokens, targets = tokens.reshape(n_windows, length), targets.reshape(n_windows, length)
        return [{"tokens": tokens[i:i + batch_size], "targets": targets[i:i + batch_size]}
                for i in range(0, n_windows, int(batch_size))]


def _check_splits(corpus: _Corpus, where: str) -> None:
    for name in SPLITS:
        if len(getattr(corpus, name)) < 2:
            raise ValueError(f"{where}: the {name!r} split has {len(getattr(corpus, name))} tokens "
                             "(needs at least 2); the input is empty or too small")


def _read_path(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"no such corpus file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"ByteCorpus needs a file (enwik8 format), got the directory {path}")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise ValueError(f"{path}: expected one file in the zip archive, found {names}")
            return zf.read(names[0])
    return path.read_bytes()


class ByteCorpus(_Corpus):
    """Byte-level corpus in the enwik8 format: the file's raw bytes are the tokens (vocab 256).
    ``source`` is a path (a ``.zip`` holding one file, like enwik8.zip, is read directly),
    ``bytes``, or a multi-line ``str`` of text (UTF-8 encoded; any text: ``from_text``). Splits: first 90% / next 5% / last 5%, i.e.
    90M / 5M / 5M on the 100M bytes of enwik8."""

    vocab_size = 256

    def __init__(self, source: Union[str, bytes, os.PathLike], split=(0.9, 0.05, 0.05)):
        if isinstance(source, (bytes, bytearray, memoryview)):
            raw, where = bytes(source), "bytes"
        elif isinstance(source, str) and "\n" in source:
            raw, where = source.encode("utf-8"), "text"
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"no such corpus file: {path} (for a one-line text, use "
                                        "ByteCorpus.from_text or pass bytes)")
            raw, where = _read_path(path), str(path)
        else:
            raise TypeError(f"source must be a path, str or bytes, got {type(source).__name__}")
        if len(raw) == 0:
            raise ValueError(f"{where}: the corpus is empty")
        data = np.frombuffer(raw, np.uint8)
        n = len(data)
        n_train = int(n * split[0])
        n_valid = int(n * split[1])
        self.train = data[:n_train]
        self.valid = data[n_train:n_train + n_valid]
        self.test = data[n_train + n_valid:]
        _check_splits(self, where)

    @classmethod
    def from_text(cls, text: str, split=(0.9, 0.05, 0.05)) -> "ByteCorpus":
        """The UTF-8 bytes of ``text`` (e.g. ``default_corpus()``) as a corpus."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return cls(text.encode("utf-8"), split)

    def encode(self, text: Union[str, bytes]) -> np.ndarray:
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(raw, np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).ravel()
        ids = ids[ids != IGNORE]
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError("byte ids must be in [0, 255]")
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


WIKITEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens",
                  "test": "wiki.test.tokens"}
EOS, UNK = "<eos>", "<unk>"
_WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


class WordCorpus(_Corpus):
    """Word-level corpus in the WikiText format: a directory with wiki.train.tokens,
    wiki.valid.tokens and wiki.test.tokens (or the path of wiki.train.tokens). Tokens are split on
    whitespace, ``<eos>`` ends every line (empty lines included, as in Transformer-XL's and
    AWD-LSTM's loaders), ``<unk>`` is an ordinary word as in WikiText. The vocabulary comes from
    train, most frequent first (ties by first occurrence), ``<eos>`` first; words of valid/test
    (or of ``encode``) not in it map to ``<unk>`` (added to the vocabulary if train lacks it)."""

    def __init__(self, path: Union[str, os.PathLike]):
        path = Path(path)
        if path.is_file() and path.name == WIKITEXT_FILES["train"]:
            path = path.parent
        if not path.exists():
            raise FileNotFoundError(f"no such WikiText directory: {path}")
        if not path.is_dir():
            raise NotADirectoryError(f"WordCorpus needs a directory holding "
                                     f"{', '.join(WIKITEXT_FILES.values())}, got the file {path}")
        missing = [f for f in WIKITEXT_FILES.values() if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: missing WikiText file(s) {', '.join(missing)}")
        # Streamed twice (count, then encode): WikiText-103's 103M words would not fit in
        # memory as Python strings.
        def reader(f):
            def lines():
                with open(f, encoding="utf-8") as fh:
                    for line in fh:
                        yield line.split()
            return lines
        self._build({s: reader(path / f) for s, f in WIKITEXT_FILES.items()}, str(path))

    @classmethod
    def from_text(cls, text: str, split=(0.9, 0.05, 0.05)) -> "WordCorpus":
        """A word-level corpus from raw text (e.g. ``default_corpus()``): lines split 90/5/5 in
        order, each line cut into words and punctuation marks, ``<eos>`` per non-empty line."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        lines = [_WORD_RE.findall(line) for line in text.splitlines()]
        lines = [ws for ws in lines if ws]
        n_train, n_valid = int(len(lines) * split[0]), int(len(lines) * split[1])
        self = cls.__new__(cls)
        parts = {"train": lines[:n_train], "valid": lines[n_train:n_train + n_valid],
                 "test": lines[n_train + n_valid:]}
        self._build({s: (lambda part=part: iter(part)) for s, part in parts.items()}, "text")
        return self

    def _build(self, sources: Dict[str, Callable[[], Iterable[List[str]]]], where: str) -> None:
        counts = Counter()
        for words in sources["train"]():
            counts.update(words)
        counts.pop(EOS, None)
        # Counter.most_common is stable: ties keep first-occurrence order.
        self.itos = [EOS] + [w for w, _ in counts.most_common()]
        if UNK not in counts:
            self.itos.append(UNK)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        for s in SPLITS:
            setattr(self, s, self._encode_lines(sources[s](), np.int32))
        _check_splits(self, where)

    def _encode_lines(self, lines: Iterable[List[str]], dtype=np.int64) -> np.ndarray:
        stoi, unk = self.stoi, self.stoi[UNK]
        out = array.array("i")
        for words in lines:
            out.extend([stoi.get(w, unk) for w in words])
            out.append(0)  # <eos>
        return np.frombuffer(out, np.int32).astype(dtype)

    def encode(self, text: str, add_eos: bool = True) -> np.ndarray:
        """Ids of whitespace-separated tokens, ``<eos>`` after each line if ``add_eos``."""
        lines = [line.split() for line in text.splitlines()] or [[]]
        if not add_eos:
            stoi, unk = self.stoi, self.stoi[UNK]
            return np.array([stoi.get(w, unk) for ws in lines for w in ws], np.int64)
        return self._encode_lines(lines)

    def decode(self, ids) -> str:
        """Text of ``ids``: words joined by spaces, ``<eos>`` as a line break."""
        ids = np.asarray(ids).ravel()
        ids = ids[ids != IGNORE]
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"word ids must be in [0, {self.vocab_size - 1}]")
        out, line = [], []
        for i in ids.tolist():
            if i == 0:
                out.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(self.itos[i])
        return "".join(out) + " ".join(line)
