"""Layer norm, ReLU, GELU and dropout: float64 finite differences, PyTorch parity, dropout's
counter-based RNG, bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rmt
from helpers import assert_close, check_grads_fd, torch_grads

ops = rmt.ops

SHAPES = [(1, 1), (1, 17), (3, 1), (4, 17), (5, 33), (2, 3, 33), (64, 128)]   # (..., C)
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- layer norm

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_matches_torch(isa, rng, shape, dtype):
    C = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(dtype)
    w = (1 + 0.3 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, mean, rstd = ops.layernorm_forward(x, w, b, eps=1e-5)
    dx, dw, db = ops.layernorm_backward(dout, x, w, mean, rstd)
    assert out.dtype == dtype and out.shape == shape and mean.shape == shape[:-1]
    # The reference runs in float64 on the same values: torch's float32 layer norm leaves
    # rounding noise in x - mean that rstd amplifies to 1e-4 when C = 1 (where xhat is 0).
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    ref, (gx, gw, gb) = torch_grads(lambda x_, w_, b_: F.layer_norm(x_, (C,), w_, b_, 1e-5),
                                    f64, dout.astype(np.float64))
    var, mu = torch.var_mean(torch.tensor(f64[0]), dim=-1, unbiased=False)
    t = tol(dtype)
    assert_close(mean, mu.numpy(), what="mean", **t)
    assert_close(rstd, (1 / torch.sqrt(var + 1e-5)).numpy(), what="rstd", **t)
    assert_close(out, ref, what="layernorm forward", **t)
    # float32 row sums of dout * xhat over up to 64 rows and C columns
    bt = t if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    assert_close(dx, gx, what="dx", **bt)
    assert_close(dw, gw, what="dweight", **bt)
    assert_close(db, gb, what="dbias", **bt)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 5), (3, 17)])
def test_layernorm_backward_finite_differences(rng, shape):
    C = shape[-1]
    x = rng.standard_normal(shape) * 2
    w = 1 + 0.3 * rng.standard_normal(C)
    b = rng.standard_normal(C)
    up = rng.standard_normal(shape)
    check_grads_fd(lambda x_, w_, b_: ops.layernorm_forward(x_, w_, b_, eps=1e-3)[0],
                   lambda d, x_, w_, b_: ops.layernorm_backward(
                       d, x_, w_, *ops.layernorm_forward(x_, w_, b_, eps=1e-3)[1:]),
                   {"x": x, "weight": w, "bias": b}, up)


def test_layernorm_is_stable_for_a_large_offset(rng):
    # A one-pass E[x^2] - E[x]^2 in float32 would lose the variance entirely here.
    x = (1e4 + rng.standard_normal((4, 64))).astype(np.float32)
    w, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    out, _, _ = ops.layernorm_forward(x, w, b)
    ref = F.layer_norm(torch.tensor(x, dtype=torch.float64), (64,)).numpy()
    assert_close(out, ref, rtol=1e-2, atol=1e-2, what="offset layernorm")


# ----------------------------------------------------------------------------- activations

def away_from_zero(x, margin=1e-3):
    """Pushes values off the ReLU kink so central differences stay on one side."""
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin * 2, x)


@pytest.mark.parametrize("shape", SHAPES + [(300, 257)])   # 77 K elements: split between threads
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_add(isa, rng, shape, dtype):
    y, x = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    np.testing.assert_array_equal(ops.residual_add(y, x), y + x)
    with pytest.raises(ValueError, match="x has shape"):
        ops.residual_add(y, np.ones(shape[:-1] + (shape[-1] + 1,), dtype))
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.residual_add(y, x.astype(np.int32))


@pytest.mark.parametrize("shape", SHAPES + [(300, 257)])   # 77 K elements: split between threads
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_torch(isa, rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[0] = 0   # torch's relu gradient at exactly 0 is 0, as ours
    dout = rng.standard_normal(shape).astype(dtype)
    out = ops.relu_forward(x)
    dx = ops.relu_backward(dout, x)
    ref, (gx,) = torch_grads(F.relu, [x], dout)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(dx, gx)


def test_relu_backward_finite_differences(rng):
    x = away_from_zero(rng.standard_normal((3, 17)))
    up = rng.standard_normal((3, 17))
    check_grads_fd(ops.relu_forward, lambda d, x_: (ops.relu_backward(d, x_),), {"x": x}, up)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_matches_torch(isa, rng, approximate, shape, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out = ops.gelu_forward(x, approximate=approximate)
    dx = ops.gelu_backward(dout, x, approximate=approximate)
    ref, (gx,) = torch_grads(lambda t: F.gelu(t, approximate=approximate), [x], dout)
    t = tol(dtype)
    assert_close(out, ref, what=f"gelu {approximate} forward", **t)
    assert_close(dx, gx, what=f"gelu {approximate} backward", **t)


def test_gelu_approximations_differ(rng):
    x = rng.standard_normal(1000) * 2
    assert np.max(np.abs(ops.gelu_forward(x) - ops.gelu_forward(x, approximate="tanh"))) > 1e-5


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_finite_differences(rng, approximate):
    x = rng.standard_normal((4, 33)) * 3
    up = rng.standard_normal((4, 33))
    check_grads_fd(lambda x_: ops.gelu_forward(x_, approximate),
                   lambda d, x_: (ops.gelu_backward(d, x_, approximate),), {"x": x}, up)


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1, 1), (3, 17), (5, 33)])
def test_dropout_forward_backward(isa, rng, dtype, shape):
    p = 0.3
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, keep = ops.dropout_forward(x, p, seed=7)
    assert keep.dtype == np.uint8 and keep.shape == shape and set(np.unique(keep)) <= {0, 1}
    scale = dtype(1) / (dtype(1) - dtype(p))
    assert_close(out, x * keep * scale, what="dropout forward", **tol(dtype))
    dx = ops.dropout_backward(dout, keep, p)
    assert_close(dx, dout * keep * scale, what="dropout backward", **tol(dtype))
    assert dx.dtype == dtype


def test_dropout_backward_finite_differences(rng):
    x = rng.standard_normal((4, 17))
    up = rng.standard_normal((4, 17))
    check_grads_fd(lambda x_: ops.dropout_forward(x_, 0.4, 11)[0],
                   lambda d, x_: (ops.dropout_backward(d, ops.dropout_forward(x_, 0.4, 11)[1], 0.4),),
                   {"x": x}, up)


def test_dropout_same_seed_same_mask_different_seed_different_mask():
    x = np.ones(10000, np.float32)
    _, k1 = ops.dropout_forward(x, 0.5, seed=123, offset=5)
    _, k2 = ops.dropout_forward(x, 0.5, seed=123, offset=5)
    _, k3 = ops.dropout_forward(x, 0.5, seed=124, offset=5)
    _, k4 = ops.dropout_forward(x, 0.5, seed=123, offset=6)
    np.testing.assert_array_equal(k1, k2)
    # Independent masks at p = 0.5 agree on about half the elements (5 sigma = 250).
    for other in (k3, k4):
        agree = int(np.sum(k1 == other))
        assert abs(agree - 5000) < 250, agree


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_keep_fraction(p):
    n = 200_000
    _, keep = ops.dropout_forward(np.ones(n), p, seed=2024)
    frac = keep.mean()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(frac - (1 - p)) <= 5 * sigma + 1e-12, (frac, 1 - p)
    if p > 0:
        # neighbours are not correlated: P(keep[i] and keep[i+1]) ~ (1-p)^2
        both = np.mean(keep[:-1] & keep[1:])
        assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n), both


def test_dropout_mask_independent_of_thread_count(rng):
    x = rng.standard_normal(300_000).astype(np.float32)   # large enough to use threads
    previous = rmt.get_num_threads()
    try:
        rmt.set_num_threads(1)
        out1, k1 = ops.dropout_forward(x, 0.25, seed=99, offset=1 << 40)
        rmt.set_num_threads(2)
        out2, k2 = ops.dropout_forward(x, 0.25, seed=99, offset=1 << 40)
    finally:
        rmt.set_num_threads(previous)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(out1, out2)


def test_dropout_offset_shifts_the_stream(rng):
    x = rng.standard_normal((6, 33))
    _, full = ops.dropout_forward(x, 0.5, seed=3)
    flat = x.reshape(-1)
    for k in (1, 17, 100, flat.size - 1):
        _, tail = ops.dropout_forward(flat[k:].copy(), 0.5, seed=3, offset=k)
        np.testing.assert_array_equal(tail, full.reshape(-1)[k:])


def test_dropout_p_zero_is_identity(rng):
    x = rng.standard_normal((3, 17)).astype(np.float32)
    out, keep = ops.dropout_forward(x, 0.0, seed=1)
    np.testing.assert_array_equal(out, x)
    assert keep.all()


# ----------------------------------------------------------------------------- bad input

def test_elementwise_ops_reject_bad_input():
    x = np.zeros((3, 4), np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="x"):
        ops.layernorm_forward(x.astype(np.int32), w, b)
    with pytest.raises(TypeError, match="x"):
        ops.layernorm_forward([[1.0, 2.0]], w, b)
    with pytest.raises(TypeError, match="weight"):
        ops.layernorm_forward(x, w.astype(np.float64), b)
    with pytest.raises(ValueError, match="weight"):
        ops.layernorm_forward(x, np.ones(5, np.float32), b)
    with pytest.raises(ValueError, match="bias"):
        ops.layernorm_forward(x, w, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="x"):
        ops.layernorm_forward(np.zeros((3, 8), np.float32)[:, ::2], w, b)
    with pytest.raises(ValueError, match="x"):
        ops.layernorm_forward(np.zeros((0, 4), np.float32), w, b)
    with pytest.raises(ValueError, match="x"):
        ops.layernorm_forward(np.array(1.0, np.float32), w[:1], b[:1])
    with pytest.raises(ValueError, match="eps"):
        ops.layernorm_forward(x, w, b, eps=-1.0)
    _, mean, rstd = ops.layernorm_forward(x, w, b)
    with pytest.raises(ValueError, match="dout"):
        ops.layernorm_backward(np.zeros((3, 5), np.float32), x, w, mean, rstd)
    with pytest.raises(ValueError, match="mean"):
        ops.layernorm_backward(x, x, w, mean[:2].copy(), rstd)
    with pytest.raises(TypeError, match="rstd"):
        ops.layernorm_backward(x, x, w, mean, rstd.astype(np.float64))

    with pytest.raises(TypeError, match="x"):
        ops.relu_forward(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="x"):
        ops.relu_forward(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="dout"):
        ops.relu_backward(np.zeros(3, np.float32), x)
    with pytest.raises(TypeError, match="dout"):
        ops.relu_backward(x.astype(np.float64), x)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_forward(x, approximate="sigmoid")
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_backward(x, x, approximate="Tanh")
    with pytest.raises(ValueError, match="x"):
        ops.gelu_forward(np.zeros((4, 4), np.float32).T)

    for p in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p"):
            ops.dropout_forward(x, p, seed=0)
        with pytest.raises(ValueError, match="p"):
            ops.dropout_backward(x, np.ones((3, 4), np.uint8), p)
    with pytest.raises(TypeError):
        ops.dropout_forward(x, 0.5, seed=-1)   # seeds are unsigned 64-bit
    with pytest.raises(ValueError, match="keep"):
        ops.dropout_backward(x, np.ones((4, 3), np.uint8), 0.5)
    with pytest.raises(TypeError, match="keep"):
        ops.dropout_backward(x, np.ones((3, 4), np.float32), 0.5)
    with pytest.raises(ValueError, match="keep"):
        ops.dropout_backward(x, np.ones((3, 8), np.uint8)[:, ::2], 0.5)
    with pytest.raises(TypeError, match="dout"):
        ops.dropout_backward(x.astype(np.float16), np.ones((3, 4), np.uint8), 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2304, 128), (70, 5000)])
def test_backward_overwrite_matches_accumulate(isa, rng, shape, dtype):
    # The layers' fresh gradient buffers are written by these ops, not zero-filled first: dx
    # starts as NaN there (overwrite=True), so an op that read it, or skipped an element, shows.
    # (70, 5000) has more elements than one thread's chunk, so both threads write.
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype)
    b = rng.standard_normal(shape[-1]).astype(dtype)
    _, mean, rstd = ops.layernorm_forward(x, w, b)
    pairs = [
        (ops.layernorm_backward(dout, x, w, mean, rstd),
         ops.layernorm_backward(dout, x, w, mean, rstd, overwrite=True)),
        ((ops.relu_backward(dout, x),), (ops.relu_backward(dout, x, overwrite=True),)),
        ((ops.gelu_backward(dout, x),), (ops.gelu_backward(dout, x, overwrite=True),)),
        ((ops.gelu_backward(dout, x, "tanh"),), (ops.gelu_backward(dout, x, "tanh", overwrite=True),)),
    ]
    for accumulated, written in pairs:
        assert np.isfinite(written[0]).all()
        for a, w_ in zip(accumulated, written):
            np.testing.assert_array_equal(a, w_)
