"""The algorithmic tasks of the RMT paper (P1 appendix A; SPEC section 4): copy, reverse,
associative retrieval and quadratic equations, as batches for rmt.Trainer.

Every task builds a token stream `s = input ++ answer`, feeds `s[:-1]` and predicts `s[1:]`; the loss
and the accuracy count only the answer positions (the last `answer_size` targets; for quadratic
equations, only up to the pad that ends the solution). The model input is
left-padded with 0 to a multiple of the number of segments, so it cuts into equal segments (or, given
`segment_len`, to `num_segments * segment_len` tokens).

Ids: 0 = pad, 1 = start-of-answer (copy/reverse/quadratic) or query marker (retrieval), 2.. =
symbols (quadratic: QUADRATIC_SYMBOLS).

Splits: `task.split(n_val, n_test)` draws held-out validation and test sets with their own seeds;
training batches (`task.train_batches(batch_size)`) never contain a held-out sample (they are
redrawn), so train/validation/test do not overlap.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Dict, Optional, Set, Tuple

import numpy as np

PAD, START = 0, 1


class Task:
    """Base class: subclasses define `_draw(rng, n) -> (inputs, answers)` (int arrays)."""

    name = ""
    answer_size = 0
    input_len = 0
    vocab_size = 0

    def __init__(self, num_segments: int = 1, seed: int = 0, segment_len: Optional[int] = None):
        if not isinstance(num_segments, int) or num_segments < 1:
            raise ValueError(f"num_segments must be an int >= 1, got {num_segments!r}")
        self.num_segments = num_segments
        self.seed = int(seed)
        stream = self.input_len + 1 + self.answer_len_in_stream()
        model_len = stream - 1
        if segment_len is None:
            self.segment_len = -(-model_len // num_segments)
        else:
            # a fixed segment length (a curriculum stage keeps its run's): more left padding
            if not isinstance(segment_len, int) or isinstance(segment_len, bool) \
                    or segment_len < 1:
                raise ValueError(f"segment_len must be an int >= 1, got {segment_len!r}")
            if segment_len * num_segments < model_len:
                raise ValueError(f"{num_segments} segments of {segment_len} tokens cannot hold "
                                 f"the model input of {model_len} tokens")
            self.segment_len = segment_len
        self.seq_len = self.segment_len * num_segments
        self.left_pad = self.seq_len - model_len
        self._held_out: Set[bytes] = set()
        self._splits: Dict[str, Dict[str, np.ndarray]] = {}

    def answer_len_in_stream(self) -> int:
        return self.answer_size

    # ---- samples ----
    def _draw(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _streams(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        n = inputs.shape[0]
        return np.concatenate([inputs, np.full((n, 1), START, np.int64), answers], axis=1)

    def make_batch(self, inputs: np.ndarray, answers: np.ndarray) -> Dict[str, np.ndarray]:
        s = self._streams(inputs, answers)
        n = s.shape[0]
        tokens = np.zeros((n, self.seq_len), np.int64)
        targets = np.full((n, self.seq_len), -100, np.int64)
        tokens[:, self.left_pad:] = s[:, :-1]
        targets[:, self.left_pad:] = s[:, 1:]
        targets[:, :-self.answer_size] = -100   # only the answer positions count
        return {"tokens": tokens, "targets": targets}

    def sample(self, n: int, rng: np.random.Generator, exclude: Optional[Set[bytes]] = None):
        """n samples as (inputs, answers), none of whose inputs is in `exclude`."""
        inputs, answers = self._draw(rng, n)
        if exclude:
            for i in range(n):
                while inputs[i].tobytes() in exclude:
                    a, b = self._draw(rng, 1)
                    inputs[i], answers[i] = a[0], b[0]
        return inputs, answers

    # ---- splits ----
    @property
    def num_inputs(self) -> int:
        """How many distinct inputs the task has (samples are unique by input)."""
        raise NotImplementedError

    def split(self, n_val: int = 1000, n_test: int = 1000) -> Dict[str, Dict[str, np.ndarray]]:
        """Validation and test batches, disjoint from each other and (from then on) from every
        training batch. Deterministic in the task's seed."""
        for name, n in (("n_val", n_val), ("n_test", n_test)):
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{name} must be an int >= 0, got {n!r}")
        if n_val + n_test >= self.num_inputs:
            # drawing them would never end, and no input would be left to train on
            raise ValueError(f"{self!r} has only {self.num_inputs} distinct inputs: cannot hold "
                             f"out {n_val} + {n_test} and still train")
        rng_val = np.random.default_rng([self.seed, 1])
        rng_test = np.random.default_rng([self.seed, 2])
        val = self._unique(rng_val, n_val, set())
        val_keys = {x.tobytes() for x in val[0]}
        test = self._unique(rng_test, n_test, val_keys)
        self._held_out = val_keys | {x.tobytes() for x in test[0]}
        self._splits = {"val": self.make_batch(*val), "test": self.make_batch(*test)}
        return self._splits

    def _unique(self, rng, n, exclude):
        inputs, answers = self._draw(rng, n)
        seen = set(exclude)
        for i in range(n):
            while inputs[i].tobytes() in seen:
                a, b = self._draw(rng, 1)
                inputs[i], answers[i] = a[0], b[0]
            seen.add(inputs[i].tobytes())
        return inputs, answers

    def train_batches(self, batch_size: int):
        """A callable step -> batch for rmt.Trainer.fit: batch `step` is a function of (seed,
        step), so a resumed run sees the same batches; held-out samples are never drawn."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")

        def batch(step: int):
            rng = np.random.default_rng([self.seed, 0, step])
            return self.make_batch(*self.sample(batch_size, rng, self._held_out))

        return batch

    def __repr__(self):
        return (f"{type(self).__name__}(num_segments={self.num_segments}, segment_len="
                f"{self.segment_len}, vocab_size={self.vocab_size}, answer_size={self.answer_size})")


class CopyTask(Task):
    """Copy-L: x = randint(2, V, L); answer [1] + x + x (the input twice); loss on the last 2L
    targets. Copy-24: V = 12, model input 72 tokens (1/3/6/9 segments of 72/24/12/8). SPEC
    section 4 says 71: the stream x ++ y is 24 + 49 = 73 tokens and the model reads s[:-1], 72,
    which 3, 6 and 9 divide; every answer target is inside it."""

    name = "copy"

    def __init__(self, length: int = 24, vocab_size: Optional[int] = None, num_segments: int = 1,
                 seed: int = 0, segment_len: Optional[int] = None):
        self.length = length
        self.vocab_size = vocab_size if vocab_size is not None else (12 if length <= 24 else 10)
        if self.vocab_size < 3:
            raise ValueError("vocab_size must be >= 3 (0 = pad, 1 = start, symbols from 2)")
        self.input_len = length
        self.answer_size = 2 * length
        super().__init__(num_segments, seed, segment_len)

    @property
    def num_inputs(self) -> int:
        return (self.vocab_size - 2) ** self.length

    def _draw(self, rng, n):
        x = rng.integers(2, self.vocab_size, (n, self.length))
        return x, np.concatenate([x, x], axis=1)


class ReverseTask(CopyTask):
    """Reverse-L: answer [1] + reversed(x); loss on the last L targets. Reverse-24: model input
    48 tokens (1/2/4/6 segments)."""

    name = "reverse"

    def __init__(self, length: int = 24, vocab_size: Optional[int] = None, num_segments: int = 1,
                 seed: int = 0, segment_len: Optional[int] = None):
        self.length = length
        self.vocab_size = vocab_size if vocab_size is not None else (12 if length <= 24 else 10)
        self.input_len = length
        self.answer_size = length
        Task.__init__(self, num_segments, seed, segment_len)

    def _draw(self, rng, n):
        x = rng.integers(2, self.vocab_size, (n, self.length))
        return x, x[:, ::-1].copy()


class AssociativeRetrievalTask(Task):
    """Associative retrieval (Ba et al.'s fast weights): `pairs` key-value pairs, keys letters
    (26, without replacement), values digits (without replacement); input k1 v1 .. kn vn, then the
    query marker, the query key, and the answer: the query's value. Loss on that one target.
    Ids: letters 2..27, digits 28..37, V = 38."""

    name = "retrieval"

    def __init__(self, pairs: int = 4, num_segments: int = 1, seed: int = 0,
                 segment_len: Optional[int] = None):
        if not 1 <= pairs <= 10:
            raise ValueError("pairs must be in [1, 10] (values are distinct digits)")
        self.pairs = pairs
        self.vocab_size = 38
        self.input_len = 2 * pairs
        self.answer_size = 1
        super().__init__(num_segments, seed, segment_len)

    def answer_len_in_stream(self):
        return 2   # the query key, then its value

    @property
    def num_inputs(self) -> int:
        return math.perm(26, self.pairs) * math.perm(10, self.pairs)

    def _draw(self, rng, n):
        keys = np.argsort(rng.random((n, 26)), axis=1)[:, :self.pairs] + 2
        values = np.argsort(rng.random((n, 10)), axis=1)[:, :self.pairs] + 28
        inputs = np.empty((n, 2 * self.pairs), np.int64)
        inputs[:, 0::2] = keys
        inputs[:, 1::2] = values
        which = rng.integers(0, self.pairs, n)
        rows = np.arange(n)
        answers = np.stack([keys[rows, which], values[rows, which]], axis=1)
        return inputs, answers


#: The quadratic-equations vocabulary (LM-RMT's 24 tokens): 0 = pad (also the end of a
#: solution), 1 = start-of-answer, digits 2..11, then the signs and letters below.
QUADRATIC_SYMBOLS = "0123456789+-*/^=()xD;,"
_QUADRATIC_IDS = {c: i + 2 for i, c in enumerate(QUADRATIC_SYMBOLS)}


def _signed(v: int) -> str:
    return f"+{v}" if v >= 0 else str(v)


def _paren(v: int) -> str:
    return str(v) if v >= 0 else f"({v})"


class QuadraticEquationsTask(Task):
    """Quadratic equations (P1 appendix A.3; SPEC section 4): solve a x^2 + b x + c = 0 step by
    step through the discriminant. Roots x1 >= x2 are integers drawn uniformly from [-100, 100]
    and a from 1..10, so b = -a (x1 + x2), c = a x1 x2. A fraction ``no_roots`` (default 20%)
    has no real roots: c is set to a (ceil((x1 + x2)^2 / 4) + m) instead, m in 1..100, which
    makes D < 0. For a = 2, roots 7 and -3:

        equation  2*x^2-8*x-42=0
        solution  D=(-8)^2-4*2*(-42)=64+336=400;x=(8+20)/(2*2)=7,x=(8-20)/(2*2)=-3

    a double root ends in ``x=-b/(2*a)=x1`` and no real roots in ``D=...=<negative>;``.

    Layout (LM-RMT's: 180 tokens, 6 segments of 30): the equation, right-padded to
    ``question_len`` (30) tokens, then the start token and the solution, right-padded to
    ``answer_size`` (149) tokens; the model input (179 tokens) is left-padded to the segments.
    The loss counts the solution and the pad that ends it; the pads after that are ignored
    (target -100). A sample is solved when every counted target is right: that is
    ``rmt.evaluate``'s ``sequence_accuracy``, and under teacher forcing it is exactly the
    condition for greedy decoding to write the whole solution (each token it predicts is then
    the next one of the reference), provided generation starts from the same prefix,
    ``tokens[:, :left_pad + question_len + 1]`` (left pad included, so that the segments are
    cut where they were), and up to exact ties of the argmax. The paper reports this "answer
    accuracy"; per-token accuracy is reported too. Ids: see QUADRATIC_SYMBOLS (V = 24)."""

    name = "quadratic"
    question_len = 30
    #: the longest solution of any equation drawn (a test enumerates them all)
    max_solution_len = 95

    def __init__(self, num_segments: int = 1, seed: int = 0, segment_len: Optional[int] = None,
                 no_roots: float = 0.2, answer_size: int = 149):
        if not isinstance(no_roots, (int, float)) or isinstance(no_roots, bool) \
                or not 0.0 <= no_roots <= 1.0:
            raise ValueError(f"no_roots must be a fraction in [0, 1], got {no_roots!r}")
        if not isinstance(answer_size, int) or isinstance(answer_size, bool) \
                or answer_size <= self.max_solution_len:
            raise ValueError(f"answer_size must be an int > {self.max_solution_len} (the longest "
                             f"solution and the pad that ends it), got {answer_size!r}")
        self.no_roots = float(no_roots)
        self.vocab_size = 2 + len(QUADRATIC_SYMBOLS)
        self.input_len = self.question_len
        self.answer_size = answer_size
        super().__init__(num_segments, seed, segment_len)

    # ---- the text of a sample ----
    @staticmethod
    def equation(a: int, b: int, c: int) -> str:
        return f"{a}*x^2{_signed(b)}*x{_signed(c)}=0"

    @staticmethod
    def solution(a: int, b: int, c: int) -> str:
        """The step-by-step solution of a x^2 + b x + c = 0: a >= 1 and integer roots, or none
        (the equations this task draws; others are a ValueError, not a wrong solution)."""
        if a < 1:
            raise ValueError(f"the task's equations have a >= 1, got a = {a}")
        b2, four_ac = b * b, 4 * a * c
        d = b2 - four_ac
        text = f"D={_paren(b)}^2-4*{a}*{_paren(c)}={b2}{_signed(-four_ac)}={d};"
        if d < 0:
            return text
        r = math.isqrt(d)
        if r * r != d or (-b + r) % (2 * a) or (-b - r) % (2 * a):
            raise ValueError(f"{a}*x^2{_signed(b)}*x{_signed(c)}=0 has no integer roots "
                             f"(D = {d}): the task's solutions are integers")
        if d == 0:
            return text + f"x={-b}/(2*{a})={-b // (2 * a)}"
        x1, x2 = (-b + r) // (2 * a), (-b - r) // (2 * a)
        return text + f"x=({-b}+{r})/(2*{a})={x1},x=({-b}-{r})/(2*{a})={x2}"

    @staticmethod
    def encode(text: str) -> np.ndarray:
        unknown = sorted(set(text) - set(QUADRATIC_SYMBOLS))
        if unknown:
            raise ValueError(f"characters outside the task's vocabulary {QUADRATIC_SYMBOLS!r}: "
                             f"{unknown}")
        return np.array([_QUADRATIC_IDS[ch] for ch in text], np.int64)

    @staticmethod
    def decode(ids) -> str:
        """The text of one row of ids (pads, the start token and -100 dropped)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decode takes one row of integer ids, got shape {ids.shape} "
                             f"and dtype {ids.dtype}")
        bad = ids[ids >= 2 + len(QUADRATIC_SYMBOLS)]
        if bad.size:
            raise ValueError(f"id {int(bad[0])} is outside the task's vocabulary "
                             f"[0, {2 + len(QUADRATIC_SYMBOLS)})")
        return "".join(QUADRATIC_SYMBOLS[i - 2] for i in ids.tolist() if i >= 2)

    @property
    def num_inputs(self) -> int:
        return 10 * (201 * 202 // 2)   # a lower bound: equations with real roots

    def _coefficients(self, rng: np.random.Generator, n: int):
        roots = rng.integers(-100, 101, (n, 2))
        x1, x2 = roots.max(axis=1), roots.min(axis=1)
        a = rng.integers(1, 11, n)
        b = -a * (x1 + x2)
        c = a * x1 * x2
        without = rng.random(n) < self.no_roots
        s = x1 + x2
        c_none = a * ((s * s + 3) // 4 + rng.integers(1, 101, n))
        return a, b, np.where(without, c_none, c)

    def _draw(self, rng, n):
        a, b, c = self._coefficients(rng, n)
        inputs = np.zeros((n, self.question_len), np.int64)
        answers = np.zeros((n, self.answer_size), np.int64)
        for i in range(n):
            q = self.encode(self.equation(int(a[i]), int(b[i]), int(c[i])))
            sol = self.encode(self.solution(int(a[i]), int(b[i]), int(c[i])))
            inputs[i, :len(q)] = q
            answers[i, :len(sol)] = sol
        return inputs, answers

    def make_batch(self, inputs: np.ndarray, answers: np.ndarray) -> Dict[str, np.ndarray]:
        batch = super().make_batch(inputs, answers)
        # the solution's own length + 1: it ends with the first pad, later pads do not count
        lengths = (answers != PAD).sum(axis=1)
        answer_targets = batch["targets"][:, -self.answer_size:]
        answer_targets[np.arange(self.answer_size)[None, :] > lengths[:, None]] = -100
        return batch


def _check_count(what: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{what} must be an int >= 1, got {v!r}")
    return v


@functools.lru_cache(maxsize=4)
def _byte_corpus(source: Optional[str]):
    from .corpus import ByteCorpus, default_corpus

    return ByteCorpus.from_text(default_corpus()) if source is None else ByteCorpus(source)


class LanguageModelTask:
    """Byte-level language modelling (P1 section 4.2, enwik8-style) in the shape the experiment
    runner expects of a task. A training sample is a random window of num_segments * segment_len
    consecutive bytes of the train split (targets: the next bytes), so memory and cache carry
    across its segments and start afresh in the next window; every target counts.

    ``corpus``: None for the default corpus (Jane Austen's novels, rmt.data.default_corpus: 4.0 MB
    of English, 90/5/5 train/valid/test), or the path of an enwik8-format file (rmt.data.ByteCorpus).
    ``split(n_val, n_test)`` takes the first n_val windows of the valid split and the first n_test
    windows of the test split, consecutive and non-overlapping (rmt.data's eval_batches), so they
    never overlap with training data. Report ``rmt.data.bits_per_byte(loss)``."""

    name = "lm"

    def __init__(self, segment_len: int = 64, corpus: Optional[str] = None, num_segments: int = 1,
                 seed: int = 0):
        _check_count("segment_len", segment_len)
        _check_count("num_segments", num_segments)
        if corpus is not None and not isinstance(corpus, str):
            raise TypeError(f"corpus must be None or a path (str), got {type(corpus).__name__}")
        # cached by absolute path, so a relative path means the same file after a chdir
        self.corpus = _byte_corpus(None if corpus is None else os.path.abspath(corpus))
        self.segment_len, self.num_segments, self.seed = segment_len, num_segments, int(seed)
        self.seq_len = segment_len * num_segments
        self.vocab_size = self.corpus.vocab_size
        for split in ("train", "valid", "test"):
            if len(self.corpus.split(split)) < self.seq_len + 1:
                raise ValueError(f"a window of {num_segments} x {segment_len} = {self.seq_len} "
                                 f"bytes (+1 target) does not fit in the {split} split "
                                 f"({len(self.corpus.split(split))} bytes)")

    def _windows(self, split: str, n: int) -> Dict[str, np.ndarray]:
        _check_count(f"the number of {split} windows", n)
        (batch,) = self.corpus.eval_batches(split, n, self.segment_len, self.num_segments,
                                            max_windows=n)
        return batch

    def split(self, n_val: int = 200, n_test: int = 400) -> Dict[str, Dict[str, np.ndarray]]:
        """{"val": the first n_val windows of the valid split, "test": the first n_test of test}
        (fewer if a split is shorter)."""
        return {"val": self._windows("valid", n_val), "test": self._windows("test", n_test)}

    def train_batches(self, batch_size: int):
        """A callable step -> batch of random train windows, a function of (seed, step)."""
        _check_count("batch_size", batch_size)
        return self.corpus.lm_batches("train", batch_size, self.segment_len, self.num_segments,
                                      seed=self.seed)

    def __repr__(self):
        return (f"{type(self).__name__}(num_segments={self.num_segments}, segment_len="
                f"{self.segment_len}, vocab_size={self.vocab_size}, train="
                f"{len(self.corpus.train):,} bytes)")


TASKS = {"copy": CopyTask, "reverse": ReverseTask, "retrieval": AssociativeRetrievalTask,
         "quadratic": QuadraticEquationsTask, "lm": LanguageModelTask}
