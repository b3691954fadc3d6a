"""Language-modelling data (rmt.data): enwik8-format bytes, WikiText-format words, the default
corpus from the Debian package r-cran-janeaustenr, batches for rmt.Trainer."""
import math
import re
import zipfile
from collections import Counter

import numpy as np
import pytest

import rmt
from rmt import data


def _enwik8_like(n: int = 20_000, seed: int = 0) -> bytes:
    """Wiki-XML-ish bytes with multi-byte UTF-8, like enwik8."""
    rng = np.random.default_rng(seed)
    words = ["<page>", "<title>", "the", "and", "of", "[[link]]", "{{cite}}", "café", "naïve",
             "über", "&amp;", "\n", "'''bold'''", "1984"]
    out = bytearray()
    while len(out) < n:
        out += (words[rng.integers(len(words))] + " ").encode("utf-8")
    return bytes(out[:n])


@pytest.fixture
def enwik8_file(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes(_enwik8_like())
    return path


TRAIN = """ = Valkyria Chronicles = 

 Senjō no Valkyria 3 : <unk> Chronicles is a tactical role @-@ playing video game . 
 The game began development in 2010 , carrying over a large portion of the work . 

 = = Gameplay = = 
 As with previous <unk> Chronicles games , the game is a tactical role @-@ playing game . 
"""
VALID = """ = Homarus gammarus = 

 Homarus gammarus is a species of lobster . 
"""
TEST = """ = Robert Boulter = 

 Robert Boulter is an English film and television actor . 
"""


@pytest.fixture
def wikitext_dir(tmp_path):
    d = tmp_path / "wikitext-2"
    d.mkdir()
    for name, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (d / f"wiki.{name}.tokens").write_text(text, encoding="utf-8")
    return d


# ---------------------------------------------------------------------------- ByteCorpus


def test_byte_corpus_splits_and_vocab(enwik8_file):
    raw = enwik8_file.read_bytes()
    c = data.ByteCorpus(enwik8_file)
    assert c.vocab_size == 256
    assert (len(c.train), len(c.valid), len(c.test)) == (18_000, 1_000, 1_000)
    assert np.concatenate([c.train, c.valid, c.test]).tobytes() == raw
    # the same from a str path, bytes, and a zip holding the one file (enwik8.zip)
    assert np.array_equal(data.ByteCorpus(str(enwik8_file)).valid, c.valid)
    assert np.array_equal(data.ByteCorpus(raw).test, c.test)
    zpath = enwik8_file.parent / "enwik8.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(enwik8_file, "enwik8")
    assert np.array_equal(data.ByteCorpus(zpath).train, c.train)


def test_byte_corpus_standard_enwik8_split_sizes():
    # 90M / 5M / 5M on the 100M bytes of enwik8: checked on the same arithmetic without the file.
    c = data.ByteCorpus(bytes(100_000_000))
    assert (len(c.train), len(c.valid), len(c.test)) == (90_000_000, 5_000_000, 5_000_000)


def test_byte_corpus_encode_decode_round_trip(enwik8_file):
    c = data.ByteCorpus(enwik8_file)
    text = "naïve café — über 1984 [[link]]\n"
    ids = c.encode(text)
    assert ids.dtype == np.int64 and len(ids) == len(text.encode("utf-8"))
    assert c.decode(ids) == text
    assert c.decode(c.valid) == enwik8_file.read_bytes()[18_000:19_000].decode("utf-8", "replace")
    with pytest.raises(ValueError, match="byte ids"):
        c.decode([300])


def test_byte_corpus_from_text():
    text = "It is a truth universally acknowledged.\n" * 100
    c = data.ByteCorpus.from_text(text)
    assert c.decode(np.concatenate([c.train, c.valid, c.test])) == text
    assert np.array_equal(data.ByteCorpus(text).train, c.train)  # a multi-line str is text


# ---------------------------------------------------------------------------- WordCorpus


def test_word_corpus_vocab_and_splits(wikitext_dir):
    c = data.WordCorpus(wikitext_dir)
    train_words = [w for line in TRAIN.splitlines() for w in line.split() + ["<eos>"]]
    assert len(c.train) == len(train_words)
    assert c.itos[0] == "<eos>" and c.stoi["<eos>"] == 0
    assert "<unk>" in c.stoi and c.vocab_size == len(set(train_words))
    # most frequent first
    counts = Counter(w for w in train_words if w != "<eos>")
    freqs = [counts[w] for w in c.itos[1:]]
    assert freqs == sorted(freqs, reverse=True)
    assert c.decode(c.train) == "\n".join(" ".join(line.split()) for line in TRAIN.splitlines()) + "\n"
    # valid/test words not in train become <unk>; <eos> closes every line (empty ones too)
    valid_words = [w for line in VALID.splitlines() for w in line.split() + ["<eos>"]]
    assert len(c.valid) == len(valid_words)
    unk = c.stoi["<unk>"]
    for w, i in zip(valid_words, c.valid):
        assert i == c.stoi.get(w, unk)
    assert int((c.valid == 0).sum()) == len(VALID.splitlines())
    # the path of wiki.train.tokens works too
    assert np.array_equal(data.WordCorpus(wikitext_dir / "wiki.train.tokens").test, c.test)


def test_word_corpus_encode_decode_round_trip(wikitext_dir):
    c = data.WordCorpus(wikitext_dir)
    text = "the game is a tactical role @-@ playing game .\nAs with previous games ,\n"
    ids = c.encode(text)
    assert ids[-1] == 0 and int((ids == 0).sum()) == 2
    assert c.decode(ids) == text
    assert c.decode(c.encode("the zeppelin")) == "the <unk>\n"
    assert list(c.encode("the game", add_eos=False)) == [c.stoi["the"], c.stoi["game"]]


def test_word_corpus_from_text():
    text = "It is a truth universally acknowledged, that a single man\n\nmust be in want of a wife.\n" * 30
    c = data.WordCorpus.from_text(text)
    assert c.stoi["a"] < c.stoi["truth"]
    assert "," in c.stoi and "acknowledged" in c.stoi
    assert c.decode(c.train[:9]) == "It is a truth universally acknowledged , that a"


# ---------------------------------------------------------------------------- batches


@pytest.mark.parametrize("kind", ["bytes", "words"])
def test_lm_batches_shapes_shift_determinism(kind, enwik8_file, wikitext_dir):
    c = data.ByteCorpus(enwik8_file) if kind == "bytes" else data.WordCorpus(wikitext_dir)
    T, S = (16, 3) if kind == "bytes" else (4, 2)
    get = c.lm_batches("train", batch_size=5, segment_len=T, num_segments=S, seed=7)
    b = get(0)
    assert set(b) == {"tokens", "targets"}
    assert b["tokens"].shape == b["targets"].shape == (5, S * T)
    assert b["tokens"].dtype == b["targets"].dtype == np.int64
    assert np.array_equal(b["tokens"][:, 1:], b["targets"][:, :-1])
    # each row is a contiguous window of train
    train = np.asarray(c.train, np.int64)
    for row_t, row_y in zip(b["tokens"], b["targets"]):
        window = np.concatenate([row_t, row_y[-1:]])
        starts = [s for s in range(len(train) - S * T) if np.array_equal(train[s:s + S * T + 1], window)]
        assert starts
    # a pure function of (seed, step)
    again = c.lm_batches("train", batch_size=5, segment_len=T, num_segments=S, seed=7)
    assert np.array_equal(again(3)["tokens"], get(3)["tokens"])
    assert np.array_equal(get(0)["tokens"], b["tokens"])
    assert not np.array_equal(get(1)["tokens"], b["tokens"])
    other = c.lm_batches("train", batch_size=5, segment_len=T, num_segments=S, seed=8)
    assert not np.array_equal(other(0)["tokens"], b["tokens"])


@pytest.mark.parametrize("max_windows", [None, 3])
def test_eval_batches_cover_split_without_overlap(enwik8_file, max_windows):
    c = data.ByteCorpus(enwik8_file)
    T, S, B = 16, 3, 4
    batches = c.eval_batches("valid", batch_size=B, segment_len=T, num_segments=S,
                             max_windows=max_windows)
    n = len(c.valid)
    n_windows = math.ceil((n - 1) / (S * T)) if max_windows is None else max_windows
    assert sum(len(b["tokens"]) for b in batches) == n_windows
    assert all(len(b["tokens"]) == B for b in batches[:-1])
    tokens = np.concatenate([b["tokens"] for b in batches]).ravel()
    targets = np.concatenate([b["targets"] for b in batches]).ravel()
    valid = np.asarray(c.valid, np.int64)
    if max_windows is None:
        # every token but the first is a target exactly once, in order; the tail is ignored
        assert np.array_equal(targets[:n - 1], valid[1:])
        assert np.all(targets[n - 1:] == -100)
        assert np.array_equal(tokens[:n - 1], valid[:-1])
    else:
        assert np.array_equal(targets, valid[1:1 + n_windows * S * T])
        assert np.array_equal(tokens, valid[:n_windows * S * T])
    again = c.eval_batches("valid", B, T, S, max_windows=max_windows)
    assert len(again) == len(batches)
    for a, b in zip(again, batches):
        assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["targets"], b["targets"])


def test_batches_feed_the_trainer(enwik8_file):
    c = data.ByteCorpus(enwik8_file)
    cfg = rmt.ModelConfig(vocab_size=c.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                          segment_len=8, num_mem_tokens=2)
    model = rmt.RMT(cfg)
    trainer = rmt.Trainer(model, rmt.Adam(lr=1e-3))
    history = trainer.fit(c.lm_batches("train", 2, 8, 2, seed=0), steps=2)
    assert all(math.isfinite(r["loss"]) for r in history if "loss" in r)
    result = rmt.evaluate(model, c.eval_batches("valid", 4, 8, 2, max_windows=8))
    assert result["tokens"] == 8 * 16
    assert 0 < data.bits_per_byte(result["loss"]) < 12
    # the whole split, with a ragged last batch and an ignored tail: every target counted once
    full = rmt.evaluate(model, c.eval_batches("test", 3, 8, 2))
    assert full["tokens"] == len(c.test) - 1


def test_metrics():
    assert data.bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert data.bits_per_byte(math.log(256)) == pytest.approx(8.0)
    assert data.perplexity(math.log(100)) == pytest.approx(100.0)


# ---------------------------------------------------------------------------- default corpus


def test_default_corpus_is_english_prose():
    text = data.default_corpus()
    assert rmt.default_corpus is data.default_corpus
    assert len(text.encode("utf-8")) >= 3_000_000
    words = re.findall(r"[a-z]+", text.lower())
    common = {w for w, _ in Counter(words).most_common(100)}
    assert {"the", "and", "of", "to", "a", "in"} <= common
    assert "It is a truth universally acknowledged" in text
    assert "Project Gutenberg" not in text and "<" not in text and "_" not in text
    novels = data.default_corpus_novels()
    assert list(novels) == ["sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                            "northangerabbey", "persuasion"]
    assert all(len(v) > 400_000 for v in novels.values())
    c = data.ByteCorpus.from_text(text)
    assert len(c.train) > 3_000_000 and len(c.test) > 150_000


def test_default_corpus_missing_names_the_package(monkeypatch, tmp_path):
    from rmt import corpus

    monkeypatch.setattr(corpus, "_R_LIBRARIES", (str(tmp_path),))
    monkeypatch.delenv("R_LIBS", raising=False)
    monkeypatch.delenv("R_LIBS_SITE", raising=False)
    with pytest.raises(FileNotFoundError, match="r-cran-janeaustenr"):
        corpus._find_janeaustenr()


# ---------------------------------------------------------------------------- bad input


def test_bad_input(tmp_path, enwik8_file, wikitext_dir):
    with pytest.raises(FileNotFoundError, match="no such corpus file"):
        data.ByteCorpus(tmp_path / "enwik9")
    with pytest.raises(FileNotFoundError, match="no such corpus file"):
        data.ByteCorpus(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.ByteCorpus(empty)
    with pytest.raises(ValueError, match="valid"):
        data.ByteCorpus(b"abc")  # too small to split
    with pytest.raises(TypeError):
        data.ByteCorpus(123)
    with pytest.raises(IsADirectoryError):
        data.ByteCorpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such WikiText directory"):
        data.WordCorpus(tmp_path / "wikitext-103")
    (wikitext_dir / "wiki.test.tokens").unlink()
    with pytest.raises(FileNotFoundError, match="wiki.test.tokens"):
        data.WordCorpus(wikitext_dir)
    (wikitext_dir / "wiki.test.tokens").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="'test' split"):
        data.WordCorpus(wikitext_dir)
    c = data.ByteCorpus(enwik8_file)  # valid and test: 1000 bytes
    with pytest.raises(ValueError, match="longer than the 'valid' split"):
        c.lm_batches("valid", batch_size=2, segment_len=500, num_segments=2)
    c.lm_batches("valid", batch_size=2, segment_len=333, num_segments=3)  # 1000 tokens: fits
    with pytest.raises(ValueError, match="split must be one of"):
        c.lm_batches("validation", 2, 8)
    with pytest.raises(ValueError, match="segment_len"):
        c.eval_batches("valid", 2, 0)
    with pytest.raises(ValueError, match="num_segments"):
        c.lm_batches("train", 2, 8, num_segments=0)
    with pytest.raises(ValueError, match="batch_size"):
        c.lm_batches("train", 0, 8)
