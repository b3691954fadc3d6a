"""Cross-entropy, Adam/AdamW and gradient clipping: float64 finite differences, PyTorch parity,
thread-count independence, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rmt
from helpers import assert_close, check_grads_fd, torch_grads

ops = rmt.ops

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)


def make_targets(rng, N, V, ignore_index, frac_ignored=0.25):
    t = rng.integers(0, V, size=N).astype(np.int64)
    t[rng.random(N) < frac_ignored] = ignore_index
    return t


# ----------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("N,V", [(1, 1), (1, 17), (4, 1), (5, 33), (37, 257), (64, 1000)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighting", ["none", "mask", "general"])
def test_cross_entropy_matches_torch(isa, rng, N, V, dtype, weighting):
    ignore_index = -100
    logits = (rng.standard_normal((N, V)) * 3).astype(dtype)
    targets = make_targets(rng, N, V, ignore_index)
    if weighting == "none":
        weights = None
    elif weighting == "mask":
        weights = (rng.random(N) < 0.7).astype(dtype)
    else:
        weights = rng.uniform(0.1, 2.0, N).astype(dtype)
    dlosses = rng.standard_normal(N).astype(dtype)
    losses, lse, count = ops.cross_entropy_forward(logits, targets.astype(np.int32), weights,
                                                   ignore_index=ignore_index)
    dlogits = ops.cross_entropy_backward(dlosses, logits, lse, targets, weights,
                                         ignore_index=ignore_index)
    w = np.ones(N, dtype) if weights is None else weights

    def ref_fn(x):
        per_row = F.cross_entropy(x, torch.tensor(targets), reduction="none",
                                  ignore_index=ignore_index)
        return per_row * torch.tensor(w)

    ref, (gref,) = torch_grads(ref_fn, [logits], dlosses)
    t = tol(dtype)
    assert losses.dtype == dtype and dlogits.shape == (N, V)
    assert_close(losses, ref, what="losses", **t)
    assert_close(lse, torch.logsumexp(torch.tensor(logits), dim=1).numpy(), what="lse", **t)
    assert_close(dlogits, gref, what="dlogits", **t)
    assert count == int(np.sum((targets != ignore_index) & (w != 0)))
    assert np.all(losses[targets == ignore_index] == 0)
    assert np.all(dlogits[targets == ignore_index] == 0)


@pytest.mark.parametrize("ignore_index", [-1, 3])
def test_cross_entropy_custom_ignore_index(rng, ignore_index):
    # ignore_index may even be a valid class: those rows are then skipped.
    N, V = 40, 7
    logits = rng.standard_normal((N, V))
    targets = rng.integers(0, V, size=N)
    targets[::5] = ignore_index
    dl = rng.standard_normal(N)
    losses, lse, count = ops.cross_entropy_forward(logits, targets, ignore_index=ignore_index)
    dlogits = ops.cross_entropy_backward(dl, logits, lse, targets, ignore_index=ignore_index)
    ref, (gref,) = torch_grads(
        lambda x: F.cross_entropy(x, torch.tensor(targets), reduction="none",
                                  ignore_index=ignore_index), [logits], dl)
    assert_close(losses, ref, rtol=1e-12, atol=1e-12)
    assert_close(dlogits, gref, rtol=1e-12, atol=1e-12)
    assert count == int(np.sum(targets != ignore_index))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_is_stable_for_large_logits(rng, dtype):
    logits = (rng.standard_normal((6, 33)) * 2 + 1e4).astype(dtype)
    logits[0, 5] = 3e4
    targets = rng.integers(0, 33, size=6)
    losses, lse, _ = ops.cross_entropy_forward(logits, targets)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(lse))
    ref = F.cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor(targets),
                          reduction="none").numpy()
    assert_close(losses, ref, rtol=1e-3, atol=1e-2)


def test_cross_entropy_backward_finite_differences(rng):
    N, V = 6, 17
    logits = rng.standard_normal((N, V)) * 2
    targets = make_targets(rng, N, V, -100, 0.3)
    targets[0] = 4
    targets[1] = -100
    weights = rng.uniform(0.0, 2.0, N)
    weights[2] = 0.0
    up = rng.standard_normal(N)
    check_grads_fd(lambda x: ops.cross_entropy_forward(x, targets, weights)[0],
                   lambda d, x: (ops.cross_entropy_backward(
                       d, x, ops.cross_entropy_forward(x, targets, weights)[1], targets, weights),),
                   {"logits": logits}, up)


def test_cross_entropy_threads_agree(rng):
    logits = rng.standard_normal((97, 513)).astype(np.float32)   # enough work to use threads
    targets = rng.integers(0, 513, size=97)
    dl = rng.standard_normal(97).astype(np.float32)
    previous = rmt.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            rmt.set_num_threads(n)
            losses, lse, count = ops.cross_entropy_forward(logits, targets)
            results.append((losses, lse, count, ops.cross_entropy_backward(dl, logits, lse, targets)))
    finally:
        rmt.set_num_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- Adam / AdamW

@pytest.mark.parametrize("shape", [(1,), (17,), (3, 11), (40_000,)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled,weight_decay", [(False, 0.0), (False, 0.1), (True, 0.0), (True, 0.05)])
def test_adam_matches_torch(isa, rng, shape, dtype, decoupled, weight_decay):
    lr, betas, eps = 3e-2, (0.8, 0.95), 1e-6
    param = rng.standard_normal(shape).astype(dtype)
    m = np.zeros(shape, dtype)
    v = np.zeros(shape, dtype)
    tp = torch.tensor(param.copy(), requires_grad=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([tp], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    for step in range(1, 6):
        grad = rng.standard_normal(shape).astype(dtype)
        tp.grad = torch.tensor(grad)
        opt.step()
        ops.adam_step(param, grad, m, v, step, lr, beta1=betas[0], beta2=betas[1], eps=eps,
                      weight_decay=weight_decay, decoupled=decoupled)
    state = opt.state[tp]
    t = tol(dtype)
    assert_close(m, state["exp_avg"].numpy(), what="m", **t)
    assert_close(v, state["exp_avg_sq"].numpy(), what="v", **t)
    assert_close(param, tp.detach().numpy(), what="param", **t)


def test_adam_and_adamw_decay_differently(rng):
    param = rng.standard_normal(50)
    grad = rng.standard_normal(50)
    results = []
    for decoupled in (False, True):
        p, m, v = param.copy(), np.zeros(50), np.zeros(50)
        ops.adam_step(p, grad, m, v, 1, 1e-2, weight_decay=0.5, decoupled=decoupled)
        results.append(p)
    assert np.max(np.abs(results[0] - results[1])) > 1e-4


def test_adam_threads_agree(rng):
    n = 100_000
    base = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    previous = rmt.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            rmt.set_num_threads(threads)
            p, m, v = base.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
            ops.adam_step(p, grad, m, v, 1, 1e-3, weight_decay=0.01)
            out.append((p, m, v))
    finally:
        rmt.set_num_threads(previous)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- clipping

@pytest.mark.parametrize("n", [1, 17, 33, 100_000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.25, 1e9])
def test_clip_grad_norm_matches_torch(isa, rng, n, dtype, max_norm):
    grad = rng.standard_normal(n).astype(dtype)
    t = torch.zeros(n, dtype=torch.from_numpy(grad).dtype, requires_grad=True)
    t.grad = torch.tensor(grad.copy())
    ref_norm = float(torch.nn.utils.clip_grad_norm_([t], max_norm))
    norm_only = ops.grad_norm(grad)
    ours = grad.copy()
    norm = ops.clip_grad_norm(ours, max_norm)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert norm == norm_only
    assert norm == pytest.approx(float(np.sqrt(np.sum(grad.astype(np.float64) ** 2))), rel=1e-12)
    assert norm == pytest.approx(ref_norm, rel=rtol)
    assert_close(ours, t.grad.numpy(), rtol=rtol, atol=0, what="clipped grad")
    if max_norm > norm:
        np.testing.assert_array_equal(ours, grad)   # untouched, not multiplied by ~1
    else:
        assert np.sqrt(np.sum(ours.astype(np.float64) ** 2)) == pytest.approx(max_norm, rel=1e-5)


def test_grad_norm_threads_agree(rng):
    grad = rng.standard_normal(123_457).astype(np.float32)
    previous = rmt.get_num_threads()
    try:
        rmt.set_num_threads(1)
        a = ops.grad_norm(grad)
        rmt.set_num_threads(2)
        b = ops.grad_norm(grad)
    finally:
        rmt.set_num_threads(previous)
    assert a == b


@pytest.mark.parametrize("shape", [(1,), (17,), (3, 33)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_matches_torch(rng, shape, dtype):
    grad = (rng.standard_normal(shape) * 2).astype(dtype)
    t = torch.zeros(shape, dtype=torch.from_numpy(grad).dtype, requires_grad=True)
    t.grad = torch.tensor(grad.copy())
    torch.nn.utils.clip_grad_value_([t], 0.7)
    ours = grad.copy()
    assert ops.clip_grad_value(ours, 0.7) is None
    np.testing.assert_array_equal(ours, t.grad.numpy())
    assert np.max(np.abs(ours)) <= dtype(0.7)


# ----------------------------------------------------------------------------- bad input

def test_cross_entropy_rejects_bad_input():
    logits = np.zeros((3, 5), np.float32)
    good = np.array([0, 4, -100])
    for bad in ([0, 5, 1], [0, -1, 1], [0, 2**40, 1]):
        with pytest.raises(IndexError, match="targets"):
            ops.cross_entropy_forward(logits, np.array(bad))
        with pytest.raises(IndexError, match="targets"):
            ops.cross_entropy_backward(np.ones(3, np.float32), logits, np.zeros(3, np.float32),
                                       np.array(bad))
    with pytest.raises(IndexError, match="targets"):
        ops.cross_entropy_forward(logits, good, ignore_index=-1)   # -100 is no longer ignored
    with pytest.raises(TypeError, match="targets"):
        ops.cross_entropy_forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy_forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy_forward(logits, np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="logits"):
        ops.cross_entropy_forward(np.zeros(5, np.float32), np.array([0]))
    with pytest.raises(TypeError, match="logits"):
        ops.cross_entropy_forward(logits.astype(np.int32), good)
    with pytest.raises(ValueError, match="logits"):
        ops.cross_entropy_forward(np.zeros((5, 3), np.float32).T, good)
    with pytest.raises(ValueError, match="weights"):
        ops.cross_entropy_forward(logits, good, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="weights"):
        ops.cross_entropy_forward(logits, good, np.ones(3, np.float64))
    _, lse, _ = ops.cross_entropy_forward(logits, good)
    with pytest.raises(ValueError, match="dlosses"):
        ops.cross_entropy_backward(np.ones(2, np.float32), logits, lse, good)
    with pytest.raises(ValueError, match="lse"):
        ops.cross_entropy_backward(np.ones(3, np.float32), logits, lse[:2].copy(), good)
    with pytest.raises(ValueError, match="ignore_index"):
        ops.cross_entropy_forward(logits, good, ignore_index=2**40)


def test_optim_ops_reject_bad_input():
    p = np.zeros((2, 3), np.float32)
    g, m, v = np.ones_like(p), np.zeros_like(p), np.zeros_like(p)
    readonly = p.copy()
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="param"):
        ops.adam_step(readonly, g, m, v, 1, 1e-3)
    with pytest.raises(ValueError, match="m"):
        ops.adam_step(p, g, np.zeros((3, 2), np.float32), v, 1, 1e-3)
    with pytest.raises(ValueError, match="v"):
        ops.adam_step(p, g, m, np.zeros((2, 6), np.float32)[:, ::2], 1, 1e-3)
    with pytest.raises(TypeError, match="grad"):
        ops.adam_step(p, g.astype(np.float64), m, v, 1, 1e-3)
    with pytest.raises(TypeError, match="param"):
        ops.adam_step(p.astype(np.int32), g, m, v, 1, 1e-3)
    with pytest.raises(ValueError, match="param"):
        ops.adam_step(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                      np.zeros(0, np.float32), 1, 1e-3)
    with pytest.raises(ValueError, match="step"):
        ops.adam_step(p, g, m, v, 0, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        ops.adam_step(p, g, m, v, 1, -1e-3)
    with pytest.raises(ValueError, match="beta1"):
        ops.adam_step(p, g, m, v, 1, 1e-3, beta1=1.0)
    with pytest.raises(ValueError, match="distinct"):
        ops.adam_step(p, g, m, m, 1, 1e-3)
    np.testing.assert_array_equal(p, 0)   # nothing was updated by the refused calls
    np.testing.assert_array_equal(m, 0)

    with pytest.raises(ValueError, match="grad"):
        ops.clip_grad_norm(readonly, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        ops.clip_grad_norm(g, -1.0)
    with pytest.raises(TypeError, match="grad"):
        ops.grad_norm([1.0, 2.0])
    with pytest.raises(ValueError, match="grad"):
        ops.grad_norm(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="grad"):
        ops.clip_grad_value(readonly, 1.0)
    with pytest.raises(ValueError, match="clip_value"):
        ops.clip_grad_value(g, -0.5)
