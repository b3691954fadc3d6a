"""Embedding and linear: float64 finite differences, PyTorch parity, bad input."""
import math

import numpy as np
import pytest
import torch

import rmt
from helpers import assert_close, check_grads_fd, torch_grads

ops = rmt.ops

SHAPES = [(1, 1, 1), (1, 7, 3), (3, 33, 17), (2, 64, 127)]   # (B, T, C): awkward tails


@pytest.mark.parametrize("B,T,C", SHAPES)
def test_embedding_matches_torch(isa, rng, B, T, C):
    V = 11
    ids = rng.integers(0, V, size=(B, T)).astype(np.int32)
    table = rng.standard_normal((V, C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    out = ops.embedding_forward(ids, table)
    dtable = ops.embedding_backward(dout, ids, V)
    ref, (_, dref) = torch_grads(
        lambda i, w: torch.nn.functional.embedding(i.long(), w) * math.sqrt(C), [ids, table], dout)
    assert_close(out, ref, what="embedding forward")
    assert_close(dtable, dref, what="embedding backward")


def test_embedding_backward_finite_differences(rng):
    V, C = 5, 6
    ids = np.array([[0, 3, 3, 4], [1, 0, 2, 3]], dtype=np.int64)   # repeated ids accumulate
    table = rng.standard_normal((V, C))
    up = rng.standard_normal((2, 4, C))
    check_grads_fd(lambda t: ops.embedding_forward(ids, t, scale=1.7),
                   lambda d, t: (ops.embedding_backward(d, ids, V, scale=1.7),),
                   {"table": table}, up)


@pytest.mark.parametrize("N,IC,OC", [(1, 1, 1), (7, 33, 5), (64, 128, 127), (130, 17, 256),
                                     (130, 600, 256)])   # IC > the GEMM's K slice (256 or 512)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(isa, rng, N, IC, OC, bias):
    x = rng.standard_normal((N, IC)).astype(np.float32)
    w = rng.standard_normal((OC, IC)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32) if bias else None
    dout = rng.standard_normal((N, OC)).astype(np.float32)
    y = ops.linear_forward(x, w, b)
    dx, dw, db = ops.linear_backward(dout, x, w, bias=bias)
    inputs = [x, w] + ([b] if bias else [])
    ref, grads = torch_grads(lambda *t: torch.nn.functional.linear(*t), inputs, dout)
    tol = dict(rtol=1e-4, atol=1e-4 * math.sqrt(IC))
    assert_close(y, ref, what="linear forward", **tol)
    assert_close(dx, grads[0], what="dx", **tol)
    assert_close(dw, grads[1], what="dweight", rtol=1e-4, atol=1e-4 * math.sqrt(N))
    if bias:
        assert_close(db, grads[2], what="dbias", rtol=1e-4, atol=1e-4 * math.sqrt(N))
    else:
        assert db is None
    # with the ReLU fused into the product: torch's relu of the same, and exactly the unfused pair
    fused = ops.linear_forward(x, w, b, relu=True)
    assert_close(fused, np.maximum(ref, 0), what="linear + relu", **tol)
    np.testing.assert_array_equal(fused, ops.relu_forward(y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,IC,OC", [(1, 1, 1), (7, 33, 5), (300, 130, 17), (2304, 256, 128)])
def test_linear_backward_overwrite_matches_accumulate(isa, rng, N, IC, OC, dtype):
    # the layers' fresh gradient buffers are written, not zero-filled and accumulated into: dx
    # starts as NaN there, so a product that read it would show
    x = rng.standard_normal((N, IC)).astype(dtype)
    w = rng.standard_normal((OC, IC)).astype(dtype)
    dout = rng.standard_normal((N, OC)).astype(dtype)
    accumulated = ops.linear_backward(dout, x, w)
    written = ops.linear_backward(dout, x, w, overwrite_dx=True)
    assert np.isfinite(written[0]).all()
    for a, b in zip(accumulated, written):
        np.testing.assert_array_equal(a, b)


def test_linear_backward_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(4)
    up = rng.standard_normal((2, 3, 4))
    check_grads_fd(lambda x_, w_, b_: ops.linear_forward(x_, w_, b_),
                   lambda d, x_, w_, b_: ops.linear_backward(d, x_, w_),
                   {"x": x, "weight": w, "bias": b}, up)


def test_dense_ops_reject_bad_input():
    table = np.zeros((5, 4), np.float32)
    with pytest.raises(IndexError, match="ids"):
        ops.embedding_forward(np.array([[0, 5]]), table)
    with pytest.raises(IndexError, match="ids"):
        ops.embedding_forward(np.array([-1]), table)
    with pytest.raises(IndexError, match="ids"):
        ops.embedding_forward(np.array([2**40]), table)          # must not wrap into range
    with pytest.raises(TypeError, match="ids"):
        ops.embedding_forward(np.array([0.5]), table)
    with pytest.raises(ValueError, match="ids.*empty"):
        ops.embedding_forward(np.zeros((0,), np.int32), table)
    with pytest.raises(TypeError, match="table"):
        ops.embedding_forward(np.array([0]), table.astype(np.int32))
    with pytest.raises(TypeError, match="table"):
        ops.embedding_forward(np.array([0]), [[0.0]])
    x = np.zeros((3, 4), np.float32)
    w = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="in_features"):
        ops.linear_forward(np.zeros((3, 5), np.float32), w)
    with pytest.raises(TypeError, match="weight"):
        ops.linear_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="bias"):
        ops.linear_forward(x, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.linear_forward(np.zeros((4, 3), np.float32).T, w)
    with pytest.raises(ValueError, match="dout"):
        ops.linear_backward(np.zeros((3, 3), np.float32), x, w)
