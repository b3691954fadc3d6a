"""The P2 memory tasks (rmt.memory_tasks): answers determined by the facts, fact positions,
held-out combinations, right-aligned layout, the lazy segment generator (equal to the whole sample,
constant memory), the tokenizer, determinism, bad arguments, and a tiny RMT encoder smoke test."""
import re
import tracemalloc
from collections import Counter

import numpy as np
import pytest

import rmt
from rmt import memory_tasks as mt

# A background that itself contains fact-like sentences: the task must scrub them.
TEXT = """It was a truth universally acknowledged that a single man in possession of a good
fortune must be in want of a wife. Mary went to the garden. John travelled to the kitchen!
The hallway is east of the bathroom. What is west of the office? Where is Daniel?
However little known the feelings or views of such a man may be on his first entering a
neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is
considered the rightful property of some one or other of their daughters. "My dear Mr. Bennet,"
said his lady to him one day, "have you heard that Netherfield Park is let at last?"
Mr. Bennet replied that he had not. Sandra moved to the bedroom; the office was north of it.
"""

TASK_CLASSES = [mt.MemorizeTask, mt.DetectMemorizeTask, mt.ReasoningTask]
T_OF = {"memorize": 16, "detect_memorize": 16, "reasoning": 24}


@pytest.fixture(scope="module")
def tasks():
    return {cls.name: cls(text=TEXT, seed=3) for cls in TASK_CLASSES}


# ----------------------------------------------------------------------------------------------
# a rule-based solver that reads only the decoded text

FACT_RE = re.compile(r"\b(mary|john|daniel|sandra) (moved|went back|went|journeyed|travelled) "
                     r"to the (\w+) \.")
WHERE_RE = re.compile(r"where is (\w+) \?$")
REL_RE = re.compile(r"\bthe (\w+) is (east|west|north|south) of the (\w+) \.")
Q_INV_RE = re.compile(r"what is the (\w+) (east|west|north|south) of \?$")
Q_DIR_RE = re.compile(r"what is (east|west|north|south) of the (\w+) \?$")
INV = {"east": "west", "west": "east", "north": "south", "south": "north"}


def solve(text):
    """(answer place, the facts' (anchor or name, place) pairs, the answer's pair)."""
    m = WHERE_RE.search(text)
    if m:
        facts = FACT_RE.findall(text)
        name = m.group(1)
        places = [p for n, _, p in facts if n == name]
        assert len(places) == 1, f"expected one fact about {name}: {text!r}"
        return places[0], [(n, p) for n, _, p in facts], (name, places[0])
    rels = REL_RE.findall(text)  # (x, rel, anchor): x is rel of anchor
    m = Q_DIR_RE.search(text)
    if m:  # what is rel of the anchor
        rel, anchor = m.groups()
        hits = [x for x, r, b in rels if b == anchor and r == rel]
    else:
        m = Q_INV_RE.search(text)
        assert m, f"no question at the end: {text[-60:]!r}"
        anchor, rel = m.groups()  # anchor is rel of x  <=>  x is INV[rel] of anchor
        hits = [x for x, r, b in rels if b == anchor and r == INV[rel]]
    assert len(hits) == 1, f"the question must have exactly one answer: {text!r}"
    return hits[0], [(b, x) for x, _, b in rels], (anchor, hits[0])


def decoded(task, row):
    return task.tokenizer.decode(row)


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(T_OF))
@pytest.mark.parametrize("split", ["train", "test"])
def test_the_answer_is_always_the_one_the_facts_give(tasks, name, split):
    task = tasks[name]
    b = task.sample(300, 3, T_OF[name], split=split, min_segments=1)
    seen = set()
    for row, label in zip(b["tokens"], b["labels"]):
        answer, _, _ = solve(decoded(task, row))
        assert mt.PLACES[label] == answer
        seen.add(int(label))
    assert seen == set(range(6)), "every class must occur"


def test_the_background_never_holds_the_entities(tasks):
    task = tasks["memorize"]
    words = set(task.tokenizer.decode(task.noise).split())
    assert not words & set(mt.NAMES + mt.PLACES)
    assert {"went", "east", "where", "truth"} <= words  # the rest of the text is kept


def _fact_starts(task, row):
    """Positions (in the row) where a fact begins, found from the words alone."""
    words = [task.tokenizer.itos[i] for i in row]
    if task.name == "reasoning":  # "the X is rel of the B ." begins 2 before "is"
        return [i - 2 for i in range(2, len(words) - 1)
                if words[i] == "is" and words[i + 1] in mt.RELATIONS and words[i - 1] in mt.ROOMS]
    actions = {a.split()[0] for a in mt.ACTIONS}  # the question has "?" after the name
    return [i for i, w in enumerate(words[:-1]) if w in mt.NAMES and words[i + 1] in actions]


@pytest.mark.parametrize("name", list(T_OF))
def test_facts_sit_where_the_task_says_and_the_question_ends_the_sample(tasks, name):
    task, T, S = tasks[name], T_OF[name], 5
    b = task.sample(200, S, T, min_segments=1)
    fact_segments = []
    for row in b["tokens"]:
        first = int(np.flatnonzero(row != mt.PAD_ID)[0])  # where the sample's own tokens start
        assert first % T == 0
        n = S - first // T
        starts = _fact_starts(task, row)
        assert len(starts) == (2 if name == "reasoning" else 1)
        own = [(p - first) for p in starts]
        segs = sorted(p // T for p in own)
        if name == "memorize":
            assert own == [0]
        else:
            # at the start of a segment, or right after the other fact in a one-segment sample
            assert all(p % T == 0 for p in own) or (n == 1 and sorted(own)[0] == 0)
        if name == "reasoning" and n > 1:
            assert segs[0] != segs[1], "the two facts go to different segments"
        fact_segments.extend(segs)
        last = task.tokenizer.decode(row[-T:])
        assert re.search(r"(where|what) is [\w ]+ \?$", last), last
    if name != "memorize":
        assert len(set(fact_segments)) == S, "facts must land in every segment position"


@pytest.mark.parametrize("name", list(T_OF))
def test_held_out_combinations_never_appear_in_training(tasks, name):
    task = tasks[name]
    held = task.held_out()
    assert len(held) == 6
    train_pairs, test_answers = set(), set()
    b = task.sample(3000, 1, T_OF[name], split="train")
    for row in b["tokens"]:
        _, pairs, _ = solve(decoded(task, row))
        train_pairs.update(pairs)
    assert not train_pairs & held
    b = task.sample(500, 1, T_OF[name], split="test")
    for row in b["tokens"]:
        _, _, answer_pair = solve(decoded(task, row))
        test_answers.add(answer_pair)
    assert test_answers == held, "the test split covers exactly the held-out pairs"
    # the exhaustive lists agree: every combination is in one split
    n_train, n_test = len(task.combinations("train")), len(task.combinations("test"))
    if name == "reasoning":
        assert n_test == 6 * 4 * 4 * 3 * 2 * 2  # anchor, distractor, relations, which, form
    else:
        assert (n_train, n_test) == (18 * 5, 6 * 5)


@pytest.mark.parametrize("name", list(T_OF))
def test_validation_holds_the_test_combinations_in_other_samples(tasks, name):
    task = tasks[name]
    assert task.combinations("validation") == task.combinations("test")
    val = task.sample(200, 2, T_OF[name], split="validation")
    test = task.sample(200, 2, T_OF[name], split="test")
    answers = set()
    for row in val["tokens"]:
        _, _, answer_pair = solve(decoded(task, row))
        answers.add(answer_pair)
    assert answers == task.held_out()
    # its own random stream: sample i differs from test sample i (the test fixture's background
    # is short, so a few rows may coincide by chance)
    same = (val["tokens"] == test["tokens"]).all(axis=1).mean()
    assert same < 0.1, same
    # and the train and test streams are the ones they were before the split was added
    assert np.array_equal(task.sample(3, 2, T_OF[name], split="test")["tokens"], test["tokens"][:3])


def test_right_aligned_samples_of_different_lengths(tasks):
    task, T, S = tasks["detect_memorize"], 16, 6
    b = task.sample(100, S, T, min_segments=2)
    assert b["tokens"].shape == (100, S * T) and b["tokens"].dtype == np.int64
    assert b["labels"].shape == (100,) and b["labels"].dtype == np.int64
    segs = b["tokens"].reshape(100, S, T)
    empty = (segs == mt.PAD_ID).all(-1)
    lengths = S - empty.sum(1)
    assert set(lengths.tolist()) == set(range(2, S + 1))
    for row, n in zip(segs, lengths):
        assert (row[:S - n] == mt.PAD_ID).all(), "leading segments are all pad"
        assert (row[S - n:] != mt.PAD_ID).all(), "a sample's own segments are full"
        assert task.tokenizer.decode(row[-1]).endswith("?")
    # the layout is rmt.right_align's
    rows = [r[r != mt.PAD_ID] for r in b["tokens"]]
    np.testing.assert_array_equal(rmt.right_align(rows, T, mt.PAD_ID, num_segments=S), b["tokens"])
    # and rmt.segments(align="right") of the samples' own tokens gives the same segments
    it = rmt.segments(rows, T, align="right", num_segments=S)
    np.testing.assert_array_equal(np.stack([s.empty for s in it], 1), empty)
    np.testing.assert_array_equal(np.concatenate([s.tokens for s in it], 1), b["tokens"])


@pytest.mark.parametrize("name", list(T_OF))
def test_lazy_segments_equal_the_whole_sample(tasks, name):
    task, T = tasks[name], T_OF[name]
    for S, lo in [(1, None), (4, None), (7, 1)]:
        whole = task.sample(5, S, T, split="test", min_segments=lo, start=10)
        lazy = np.concatenate(list(task.segments_of(range(10, 15), S, T, min_segments=lo)), 1)
        np.testing.assert_array_equal(lazy, whole["tokens"])
        np.testing.assert_array_equal(task.labels_of(range(10, 15)), whole["labels"])
        one = list(task.segments_of(12, S, T, min_segments=lo))
        assert len(one) == S and all(s.shape == (1, T) for s in one)
        np.testing.assert_array_equal(np.concatenate(one, 1)[0], whole["tokens"][2])
    # a sample's facts and label do not depend on the length asked for
    a = task.sample(20, 2, T, split="train")["labels"]
    np.testing.assert_array_equal(a, task.sample(20, 9, T + 3, split="train")["labels"])


def _peak_bytes(task, num_segments, T):
    tracemalloc.start()
    tracemalloc.reset_peak()
    count = 0
    for seg in task.segments_of(3, num_segments, T):
        count += seg.shape[1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == num_segments * T
    return peak


def test_lazy_generator_memory_does_not_grow_with_length(tasks):
    task = tasks["reasoning"]
    _peak_bytes(task, 16, 64)  # warm the caches
    small = _peak_bytes(task, 16, 64)
    large = _peak_bytes(task, 4096, 64)  # 262,144 tokens; the whole sample would be 2 MB
    assert large <= small + 16 * 1024, (small, large)
    assert large < 4096 * 64 * 8 / 8


def test_tokenizer_round_trip_and_json(tmp_path, tasks):
    tok = mt.WordTokenizer.from_text(TEXT)
    assert tok.itos[:4] == ["<pad>", "<cls>", "<sep>", "<unk>"]
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
    cfg = rmt.ModelConfig(vocab_size=tok.vocab_size, d_model=8, n_layers=1, n_heads=1, d_ff=8,
                          segment_len=4, kind="rmt_encoder", num_mem_tokens=1, num_classes=6)
    assert (cfg.pad_id, cfg.cls_id, cfg.sep_id) == (tok.pad_id, tok.cls_id, tok.sep_id)
    assert all(w in tok.stoi for w in mt.TASK_WORDS)
    text = 'Mary went back to the Kitchen. "Have you heard," said his lady?'
    ids = tok.encode(text)
    assert tok.decode(ids) == 'mary went back to the kitchen . " have you heard , " said his lady ?'
    np.testing.assert_array_equal(tok.encode(tok.decode(ids)), ids)
    assert tok.encode("zyzzyva")[0] == tok.unk_id
    assert tok.decode([0, 1, 5, 2]) == tok.itos[5]
    assert tok.decode([0, 1, 2], skip_special=False) == "<pad> <cls> <sep>"
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    back = mt.WordTokenizer.load(path)
    assert back == tok and back.vocab_size == tok.vocab_size
    # a task built on the loaded tokenizer makes the same samples
    a = mt.MemorizeTask(text=TEXT, tokenizer=back, seed=3).sample(4, 2, 16)
    b = tasks["memorize"].sample(4, 2, 16)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    # sample ids decode and re-encode to themselves (no pad in a full sample)
    row = b["tokens"][0]
    np.testing.assert_array_equal(tok.encode(tok.decode(row)), row)
    capped = mt.WordTokenizer.from_text(TEXT, max_vocab=len(mt.TASK_WORDS) + 4 + 3)
    assert capped.vocab_size == len(mt.TASK_WORDS) + 7
    counts = Counter(mt.WordTokenizer.words(TEXT))  # most frequent non-task words, ties in order
    rest = [w for w, _ in counts.most_common() if w not in mt.TASK_WORDS]
    assert capped.itos[-3:] == rest[:3] and rest[0] == "a"


def test_tokenizer_bad_files_raise(tmp_path):
    for content, match in [("{", "not valid JSON"), ('{"format": "x"}', "not a"),
                           ('{"format": "rmt.memory_tasks.WordTokenizer", "version": 9}', "version"),
                           ('{"format": "rmt.memory_tasks.WordTokenizer", "version": 1, '
                            '"itos": ["a", "b"]}', "must start with")]:
        (tmp_path / "t.json").write_text(content)
        with pytest.raises(ValueError, match=match):
            mt.WordTokenizer.load(tmp_path / "t.json")
    with pytest.raises(ValueError, match="duplicate"):
        mt.WordTokenizer(list(mt.SPECIAL_TOKENS) + ["a", "a"])
    with pytest.raises(ValueError, match="ids must be"):
        mt.WordTokenizer.from_text(TEXT).decode([10 ** 6])


def test_determinism_by_seed(tasks):
    task = tasks["reasoning"]
    same = mt.ReasoningTask(text=TEXT, seed=3)
    other = mt.ReasoningTask(text=TEXT, seed=4)
    a = task.sample(8, 3, 24, min_segments=1)
    np.testing.assert_array_equal(a["tokens"], same.sample(8, 3, 24, min_segments=1)["tokens"])
    assert not np.array_equal(a["tokens"], other.sample(8, 3, 24, min_segments=1)["tokens"])
    batches = task.train_batches(4, 3, 24)
    b0, b1 = batches(0), batches(1)
    np.testing.assert_array_equal(b0["tokens"], same.train_batches(4, 3, 24)(0)["tokens"])
    np.testing.assert_array_equal(b0["tokens"], batches(0)["tokens"])
    assert not np.array_equal(b0["tokens"], b1["tokens"])
    np.testing.assert_array_equal(b1["tokens"], task.sample(4, 3, 24, start=4)["tokens"])
    assert set(b0) == {"tokens", "labels"}
    g = task.sample(8, 3, 24, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(g["tokens"], task.sample(8, 3, 24, rng=5)["tokens"])
    assert not np.array_equal(g["tokens"], a["tokens"])
    ev = task.eval_batches(10, 4, 3, 24)
    assert [len(e["labels"]) for e in ev] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([e["tokens"] for e in ev]),
                                  task.sample(10, 3, 24, split="test")["tokens"])


def test_bad_arguments_raise_clear_errors(tasks):
    task = tasks["memorize"]
    with pytest.raises(ValueError, match="segment_len must be >= 11"):
        task.sample(2, 3, 10)
    with pytest.raises(ValueError, match="segment_len must be >= 23"):
        tasks["reasoning"].sample(2, 3, 20, min_segments=1)
    tasks["reasoning"].sample(2, 3, 15)  # two segments or more: the facts never share one
    with pytest.raises(ValueError, match="min_segments"):
        task.sample(2, 3, 16, min_segments=4)
    with pytest.raises(ValueError, match="split"):
        task.sample(2, 3, 16, split="valid")
    with pytest.raises(ValueError, match="num_segments"):
        task.sample(2, 0, 16)
    with pytest.raises(ValueError, match="n must"):
        task.sample(0, 2, 16)
    with pytest.raises(TypeError, match="segment_len"):
        task.sample(2, 2, 16.0)
    with pytest.raises(TypeError, match="num_segments"):
        task.sample(2, True, 16)
    with pytest.raises(TypeError, match="rng"):
        task.sample(2, 2, 16, rng="x")
    with pytest.raises(ValueError, match="sample_index"):
        task.segments_of(-1, 2, 16)
    with pytest.raises(ValueError, match="segment_len"):
        task.segments_of(0, 2, 4)  # checked when called, not when iterated
    with pytest.raises(ValueError, match="batch_size"):
        task.train_batches(0, 2, 16)
    with pytest.raises(ValueError, match="seed"):
        mt.MemorizeTask(text=TEXT, seed=-1)
    with pytest.raises(TypeError, match="text"):
        mt.MemorizeTask(text=b"bytes")
    with pytest.raises(ValueError, match="task words"):
        mt.MemorizeTask(text=TEXT, tokenizer=mt.WordTokenizer(list(mt.SPECIAL_TOKENS) + ["a"]))
    with pytest.raises(ValueError, match="max_vocab"):
        mt.WordTokenizer.from_text(TEXT, max_vocab=5)
    with pytest.raises(ValueError, match="unknown memory task"):
        mt.memory_task("copy")
    assert isinstance(mt.memory_task("reasoning", text=TEXT), mt.ReasoningTask)


def test_default_corpus_background():
    task = rmt.MemorizeTask()  # Jane Austen, from the Debian package
    assert task.noise.size > 500_000 and task.tokenizer.vocab_size > 10_000
    b = task.sample(4, 2, 32)
    for row, label in zip(b["tokens"], b["labels"]):
        assert mt.PLACES[label] == solve(task.tokenizer.decode(row))[0]


def test_rmt_encoder_trains_and_streams_a_lazy_sample(tasks):
    task, T = tasks["detect_memorize"], 16
    cfg = rmt.ModelConfig(kind="rmt_encoder", vocab_size=task.tokenizer.vocab_size, d_model=16,
                          n_layers=1, n_heads=2, d_ff=32, segment_len=T, num_mem_tokens=2,
                          num_classes=task.num_classes, dropout=0.0)
    model = rmt.RMTEncoder(cfg, seed=0)
    trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-3))
    history = trainer.fit(task.train_batches(4, 3, T, min_segments=1), steps=3)
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    model.eval()
    S = 5
    whole = task.sample(2, S, T, split="test", min_segments=2, start=6)
    logits = list(model.stream(task.segments_of([6, 7], S, T, min_segments=2)))
    assert len(logits) == S and logits[-1].shape == (2, task.num_classes)
    np.testing.assert_allclose(logits[-1], model(whole["tokens"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("questions", mt.QUESTION_SETS)
def test_reasoning_question_sets_narrow_the_questions_only(questions):
    task = mt.ReasoningTask(text=TEXT, seed=3, questions=questions)
    full = mt.ReasoningTask(text=TEXT, seed=3)
    for split in mt.SPLITS:
        combos = task.combinations(split)
        assert combos and set(combos) <= set(full.combinations(split))
    b = task.sample(200, 2, 24, split="train", min_segments=1)
    forms = Counter()
    for row, label in zip(b["tokens"], b["labels"]):
        text = decoded(task, row)
        answer, _, _ = solve(text)          # still determined by the facts
        assert mt.PLACES[label] == answer
        direct = Q_DIR_RE.search(text)
        forms["direct" if direct else "inverse"] += 1
        if questions == "east":
            assert direct and direct.group(1) == "east", text[-40:]
    if questions == "all":
        assert forms["direct"] and forms["inverse"]
    else:
        assert forms == Counter(direct=200)
    # the held-out pairs are the task's whatever the questions
    held = task.held_out()
    for combo in task.combinations("train"):
        b_, a, _, c, _, _, _ = combo
        assert (b_, a) not in held and (b_, c) not in held
    with pytest.raises(ValueError, match="questions"):
        mt.ReasoningTask(text=TEXT, questions="west")
