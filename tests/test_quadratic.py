"""Quadratic equations (P1 appendix A.3): the generator's equations and solutions are right,
the layout and the targets are the ones the docstring states, splits are disjoint and seeded,
and whole-solution accuracy (rmt.trainer.evaluate's sequence_accuracy) counts exact answers."""
import math
import re

import numpy as np
import pytest

import rmt
from rmt import experiments, tasks
from rmt.trainer import evaluate

Q = tasks.QuadraticEquationsTask

EQUATION = re.compile(r"^(\d+)\*x\^2([+-]\d+)\*x([+-]\d+)=0$")


def parse_and_check(equation: str, solution: str):
    """Checks the solution's arithmetic from the equation's text alone; returns the roots."""
    a, b, c = map(int, EQUATION.match(equation).groups())
    assert 1 <= a <= 10
    head, _, roots = solution.partition(";")
    paren = lambda v: str(v) if v >= 0 else f"({v})"
    d = b * b - 4 * a * c
    sign = "+" if -4 * a * c >= 0 else "-"
    assert head == f"D={paren(b)}^2-4*{a}*{paren(c)}={b * b}{sign}{abs(4 * a * c)}={d}"
    if d < 0:
        assert roots == ""
        return []
    values = [int(v) for v in re.findall(r"=(-?\d+)(?:,|$)", roots)]
    assert len(values) == (1 if d == 0 else 2)
    for x in values:
        assert a * x * x + b * x + c == 0
    if d > 0:
        r = math.isqrt(d)
        assert r * r == d
        assert roots == (f"x=({-b}+{r})/(2*{a})={values[0]},x=({-b}-{r})/(2*{a})={values[1]}")
        assert values[0] > values[1]
    else:
        assert roots == f"x={-b}/(2*{a})={values[0]}"
    return values


def test_equations_and_solutions_are_right_and_fill_the_papers_layout():
    task = Q(num_segments=6, seed=0)
    assert (task.vocab_size, task.segment_len, task.seq_len, task.left_pad) == (24, 30, 180, 1)
    b = task.train_batches(400)(0)
    toks, tgts = b["tokens"], b["targets"]
    assert toks.shape == tgts.shape == (400, 180)
    no_roots = 0
    for row_t, row_y in zip(toks, tgts):
        question = row_t[1:31]
        assert row_t[0] == tasks.PAD and row_t[31] == tasks.START
        equation = Q.decode(question)
        # the equation is right-padded inside its 30 tokens
        assert (question[len(equation):] == tasks.PAD).all() and (question[:len(equation)] >= 2).all()
        counted = row_y[row_y != -100]
        assert counted[-1] == tasks.PAD and (counted[:-1] >= 2).all()   # the solution, then its end
        assert (row_y[:-149] == -100).all()        # only answer positions count
        assert (row_y[-149:][len(counted):] == -100).all()   # pads after the end do not
        solution = Q.decode(counted)
        # teacher forcing: the model input holds the previous target at every answer position
        np.testing.assert_array_equal(row_t[32:32 + len(counted) - 1], counted[:-1])
        roots = parse_and_check(equation, solution)
        no_roots += not roots
        assert all(-100 <= x <= 100 for x in roots)
    assert 0.12 < no_roots / 400 < 0.28   # 20% are drawn without real roots


def test_the_worked_examples():
    assert Q.equation(2, -8, -42) == "2*x^2-8*x-42=0"
    assert Q.solution(2, -8, -42) == "D=(-8)^2-4*2*(-42)=64+336=400;x=(8+20)/(2*2)=7,x=(8-20)/(2*2)=-3"
    assert Q.solution(1, -4, 4) == "D=(-4)^2-4*1*4=16-16=0;x=4/(2*1)=2"
    assert Q.solution(3, 0, 12) == "D=0^2-4*3*12=0-144=-144;"
    assert Q.decode(Q.encode("x=(8+20)/(2*2)=7,")) == "x=(8+20)/(2*2)=7,"


def test_max_solution_len_bounds_every_equation_that_can_be_drawn():
    # every a and root pair, with real roots and with the two extremes of the no-roots shift
    longest = longest_eq = 0
    for a in range(1, 11):
        for x1 in range(-100, 101):
            for x2 in range(-100, x1 + 1):
                b, c, s = -a * (x1 + x2), a * x1 * x2, x1 + x2
                for cc in (c, a * ((s * s + 3) // 4 + 1), a * ((s * s + 3) // 4 + 100)):
                    longest = max(longest, len(Q.solution(a, b, cc)))
                    longest_eq = max(longest_eq, len(Q.equation(a, b, cc)))
    assert longest == Q.max_solution_len
    assert longest_eq <= Q.question_len


def test_no_roots_draws_negative_discriminants_only():
    none = Q(no_roots=1.0, seed=3).train_batches(100)(0)
    every = Q(no_roots=0.0, seed=3).train_batches(100)(0)
    for row in none["targets"]:
        assert ";x" not in Q.decode(row[row != -100]) and "=-" in Q.decode(row[row != -100])
    for row in every["targets"]:
        assert ";x=" in Q.decode(row[row != -100])


def test_splits_are_disjoint_deterministic_and_never_in_training():
    task = Q(num_segments=6, seed=5)
    split = task.split(100, 100)
    key = lambda batch: {r.tobytes() for r in batch["tokens"][:, 1:31]}
    val, test = key(split["val"]), key(split["test"])
    assert len(val) == len(test) == 100 and not val & test
    for step in range(5):
        assert not key(task.train_batches(64)(step)) & (val | test)
    again = Q(num_segments=6, seed=5).split(100, 100)
    np.testing.assert_array_equal(again["test"]["targets"], split["test"]["targets"])
    other = Q(num_segments=6, seed=6).split(100, 100)
    assert key(other["val"]) != val


def test_solutions_outside_the_tasks_equations_are_refused_not_wrong():
    for a, b, c in ((2, -3, 1), (1, 1, -1), (4, 4, 1), (-1, 0, 4), (0, 2, 4)):
        with pytest.raises(ValueError, match="integer roots|a >= 1"):
            Q.solution(a, b, c)
    with pytest.raises(ValueError, match="vocabulary"):
        Q.encode("x = 1")
    with pytest.raises(ValueError, match="id 24"):
        Q.decode([2, 24])
    with pytest.raises(ValueError, match="one row"):
        Q.decode(np.zeros((2, 3), np.int64))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="no_roots"):
        Q(no_roots=1.5)
    with pytest.raises(ValueError, match="answer_size"):
        Q(answer_size=90)
    with pytest.raises(ValueError, match="cannot hold"):
        Q(num_segments=6, segment_len=20)
    assert "quadratic" in tasks.TASKS


class FixedLogits:
    """A stand-in model whose argmax is given, batch after batch (for evaluate's counting)."""

    training = False

    def __init__(self, predictions, vocab):
        self.queue, self.vocab = list(predictions), vocab

    def eval(self):
        pass

    def train(self, mode=True):
        pass

    def forward(self, tokens, targets, mask=None):
        predictions = self.queue.pop(0)
        logits = np.zeros(predictions.shape + (self.vocab,), np.float32)
        np.put_along_axis(logits, predictions[..., None], 1.0, axis=-1)
        return 1.0, logits


def test_sequence_accuracy_counts_rows_whose_every_counted_token_is_right():
    task = Q(num_segments=6, seed=0)
    batch = task.train_batches(4)(0)
    targets = batch["targets"]
    pred = np.where(targets == -100, 0, targets)
    pred[1, 0] = 5          # a wrong prediction where nothing is counted: still solved
    last = np.flatnonzero(targets[2] != -100)[-1]
    pred[2, last] = 7       # the end of row 2's solution is wrong: not solved
    first = np.flatnonzero(targets[3] != -100)[0]
    pred[3, first] = 3 if targets[3, first] != 3 else 4
    m = evaluate(FixedLogits([pred], 24), batch)
    assert m["sequence_accuracy"] == pytest.approx(2 / 4) and m["sequences"] == 4
    counted = int((targets != -100).sum())
    assert m["accuracy"] == pytest.approx((counted - 2) / counted)
    # over several batches, rows are counted across them
    two = evaluate(FixedLogits([pred[:1], pred[1:2]], 24), [{k: v[:1] for k, v in batch.items()},
                                               {k: v[1:2] for k, v in batch.items()}])
    assert two["sequence_accuracy"] == 1.0 and two["sequences"] == 2


def test_sequence_accuracy_with_a_loss_mask_rows_without_targets_and_labels():
    targets = np.array([[-100, 3, 4], [-100, -100, -100], [5, 6, 7]])
    pred = np.array([[0, 3, 9], [0, 0, 0], [5, 6, 7]])
    batch = {"tokens": np.zeros((3, 3), np.int64), "targets": targets}
    m = evaluate(FixedLogits([pred], 10), batch)
    assert (m["sequences"], m["sequence_accuracy"]) == (2, 0.5)   # row 1 counts for nothing
    # a loss mask of 0 takes the wrong token of row 0 out of the count
    masked = dict(batch, loss_mask=np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1]], np.float32))
    m = evaluate(FixedLogits([pred], 10), masked)
    assert (m["sequences"], m["sequence_accuracy"], m["accuracy"]) == (2, 1.0, 1.0)
    # whole-row and per-token accuracy are not ordered: a short right row, a long wrong one
    rows = {"tokens": np.zeros((2, 4), np.int64),
            "targets": np.array([[-100, -100, -100, 2], [2, 2, 2, 2]])}
    m = evaluate(FixedLogits([np.array([[0, 0, 0, 2], [3, 3, 3, 3]])], 5), rows)
    assert m["sequence_accuracy"] == 0.5 and m["accuracy"] == pytest.approx(0.2)


class FixedClassifier(FixedLogits):
    def forward(self, tokens, labels):
        predictions = self.queue.pop(0)
        logits = np.zeros((len(predictions), self.vocab), np.float32)
        logits[np.arange(len(predictions)), predictions] = 1.0
        return 1.0, logits


def test_sequence_accuracy_of_a_classifier_is_its_accuracy():
    batch = {"tokens": np.zeros((4, 3), np.int64), "labels": np.array([0, 1, 2, 1])}
    m = evaluate(FixedClassifier([np.array([0, 1, 0, 0])], 3), batch)
    assert m["sequence_accuracy"] == m["accuracy"] == 0.5 and m["sequences"] == 4


@pytest.mark.parametrize("cls, extra", [(rmt.Transformer, {}), (rmt.TransformerXL, {"mem_len": 30}),
                                        (rmt.RMT, {"num_mem_tokens": 30})])
def test_each_next_token_greedy_decoding_writes_is_the_teacher_forced_argmax(cls, extra):
    # The docstring's claim, for the kinds of the grid in 6 segments of 30: from the question's
    # prefix (left pad included), the token generate() writes next is the argmax the teacher-
    # forced forward gives at that position, at every answer position. So greedy decoding writes
    # the whole solution exactly when every counted target is argmax-right.
    rmt.set_num_threads(1)
    task = Q(num_segments=6, seed=0)
    cfg = rmt.ModelConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                          segment_len=task.segment_len, dropout=0.0, **extra)
    model = cls(cfg, seed=1).eval()
    batch = task.train_batches(3)(0)
    tokens = batch["tokens"]
    _, logits = model.forward(tokens, batch["targets"])
    argmax = logits.argmax(-1)
    prompt = task.left_pad + task.question_len + 1      # through the start token
    assert (batch["targets"][:, :prompt - 1] == -100).all()
    assert (batch["targets"][:, prompt - 1] != -100).all()   # the first target: after the start
    for p in range(prompt, task.seq_len + 1):
        written = model.generate(tokens[:, :p], 1, greedy=True)[:, -1]
        np.testing.assert_array_equal(written, argmax[:, p - 1], err_msg=f"position {p - 1}")


def test_greedy_decoding_of_a_trained_model_follows_the_reference_until_its_first_error():
    rmt.set_num_threads(1)
    task = Q(num_segments=1, seed=0, answer_size=96)
    cfg = rmt.ModelConfig(vocab_size=24, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                          segment_len=task.segment_len, dropout=0.0)
    model = rmt.Transformer(cfg)
    trainer = rmt.Trainer(model, rmt.Adam(lr=3e-3))
    gen = task.train_batches(16)
    for step in range(40):
        trainer.step(gen(step))
    model.eval()
    batch = gen(1000)
    _, logits = model.forward(batch["tokens"], batch["targets"])
    argmax = logits.argmax(-1)
    prompt = task.left_pad + task.question_len + 1
    prefixes = []
    for row in range(6):
        counted = np.flatnonzero(batch["targets"][row] != -100)
        reference = batch["targets"][row, counted]
        wrong = np.flatnonzero(argmax[row, counted] != reference)
        written = model.generate(batch["tokens"][row:row + 1, :prompt], len(counted),
                                 greedy=True)[0, prompt:]
        if wrong.size == 0:
            np.testing.assert_array_equal(written, reference)
            continue
        k = wrong[0]
        prefixes.append(k)
        np.testing.assert_array_equal(written[:k], reference[:k])
        assert written[k] == argmax[row, counted[k]] != reference[k]
    # after 40 steps the model writes "D=" and more before its first mistake
    assert min(prefixes, default=99) >= 2


def test_the_quadratic_grid_has_the_papers_cells(tmp_path):
    specs = experiments.get_grid("p1-quadratic")
    cells = {(s["kind"], s["num_segments"], s["memory"]) for s in specs}
    assert cells == {("transformer", 1, 0), ("txl", 6, 30), ("rmt", 6, 30)}
    for s in specs:
        assert s["model"] == experiments.PAPER_MODELS["quadratic"] and s["batch_size"] == 32
    model = experiments.build_model(specs[2])
    assert model.num_parameters == 1880856   # LM-RMT's n_all_param for RMT with 30 memory tokens
    (r,) = experiments.run_grid([specs[2]], tmp_path, quick=True)
    m = r["metrics"]
    assert 0.0 <= m["test_sequence_accuracy"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
    assert r["vocab_size"] == 24
    (row,) = experiments.summary_table([r])
    assert row["test_sequence_accuracy"] == m["test_sequence_accuracy"]
