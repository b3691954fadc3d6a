"""The vector kernels of every ISA against their scalar references and against numpy."""
import numpy as np
import pytest

import rmt

k = rmt.kernels

LENGTHS = [0, 1, 7, 15, 16, 17, 33, 127, 1000]   # tails around the 8/16-lane vector widths
DTYPES = [np.float32, np.float64]


def tol(dtype, n=1):
    """Tolerance for a result summed over n terms in a different order."""
    eps = np.finfo(dtype).eps
    return dict(rtol=8 * eps, atol=8 * eps * max(n, 1))


def vec(rng, n, dtype, scale=1.0):
    return (scale * rng.standard_normal(n)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_dot(isa, rng, n, dtype):
    x, y = vec(rng, n, dtype), vec(rng, n, dtype)
    ours, ref = k.vec_dot(x, y), k.vec_dot(x, y, reference=True)
    exact = float(np.dot(x.astype(np.float64), y.astype(np.float64)))
    t = tol(dtype, n)
    assert ours == pytest.approx(ref, rel=t["rtol"], abs=t["atol"])
    assert ours == pytest.approx(exact, rel=t["rtol"], abs=t["atol"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_axpy(isa, rng, n, dtype):
    x, y = vec(rng, n, dtype), vec(rng, n, dtype)
    y_before = y.copy()
    ours, ref = k.vec_axpy(-1.7, x, y), k.vec_axpy(-1.7, x, y, reference=True)
    np.testing.assert_array_equal(y, y_before)   # the binding works on a copy
    assert ours.dtype == dtype and ours.shape == (n,)
    np.testing.assert_allclose(ours, ref, **tol(dtype))
    np.testing.assert_allclose(ours, y + dtype(-1.7) * x, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [n for n in LENGTHS if n > 0])
def test_max(isa, rng, n, dtype):
    x = vec(rng, n, dtype)
    # The maximum at every position in turn catches a lane or a tail the kernel skips.
    for pos in sorted({0, n // 2, n - 1}):
        z = x.copy()
        z[pos] = 100.0
        assert k.vec_max(z) == k.vec_max(z, reference=True) == 100.0
    assert k.vec_max(x) == k.vec_max(x, reference=True) == float(np.max(x))
    assert k.vec_max(-np.abs(x) - 1) == float(np.max(-np.abs(x) - 1))   # all negative


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_exp_shift_sum(isa, rng, n, dtype):
    x = vec(rng, n, dtype, scale=4.0)
    shift = float(np.max(x)) if n else 0.0
    ours, s = k.vec_exp_shift_sum(x, shift)
    ref, s_ref = k.vec_exp_shift_sum(x, shift, reference=True)
    expected = np.exp(x.astype(np.float64) - shift)
    rtol = 4e-6 if dtype == np.float32 else 1e-13   # xsimd's exp is a few ulp off libm's
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=0)
    np.testing.assert_allclose(ours, expected, rtol=rtol, atol=0)
    assert s == pytest.approx(s_ref, rel=rtol * 4, abs=1e-30)
    assert s == pytest.approx(expected.sum(), rel=rtol * 4, abs=1e-30)


def test_the_float_exp_of_softmax_is_accurate_over_its_whole_range(isa):
    # exp_shift_sum's exp (the softmax's too) has its own float polynomial: every argument from
    # the underflow bound to 0, the values below it (0, as xsimd's exp gives; the scalar table's std::exp gives
    # subnormals), -inf and NaN; positive arguments up to overflow (+inf, never a wrapped exponent)
    x = np.concatenate([np.linspace(-87.33, 0.0, 200001), -np.logspace(-8, 0, 1000),
                        [0.0, -0.0]]).astype(np.float32)
    ours, s = k.vec_exp_shift_sum(x, 0.0)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(ours / exact - 1)) < 3e-7   # the polynomial's 2.1e-7, plus rounding
    assert s == pytest.approx(exact.sum(), rel=1e-5)
    high, _ = k.vec_exp_shift_sum(np.array([1.0, 10.0, 50.0, 88.0, 88.5, 90.0, 200.0, np.inf] * 3,
                                           np.float32), 0.0)
    with np.errstate(over="ignore"):
        want = np.exp(np.array([1.0, 10.0, 50.0, 88.0, 88.5, 90.0, 200.0, np.inf] * 3, np.float32))
    fin = np.isfinite(want) & np.isfinite(high)
    np.testing.assert_allclose(high[fin], want[fin], rtol=1e-6)
    assert np.all(np.isinf(high[~np.isfinite(want)]) & (high[~np.isfinite(want)] > 0))
    low, _ = k.vec_exp_shift_sum(np.array([-87.35, -100.0, -1e30, -np.inf] * 5, np.float32), 0.0)
    assert np.all((low >= 0) & (low < 1.2e-38))   # std::exp's subnormals, or 0
    for pos in (0, 7, 16, 18):   # a lane of a whole vector, the ragged end
        z = np.zeros(19, np.float32)
        z[pos] = np.nan
        e, _ = k.vec_exp_shift_sum(z, 0.0)
        assert np.isnan(e[pos]) and np.count_nonzero(np.isnan(e)) == 1
        assert np.isnan(k.vec_softmax(z)).all() == np.isnan(k.vec_softmax(z, reference=True)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (1, 1), (5, 3), (7, 16), (8, 8), (16, 16),
                                   (17, 5), (33, 7), (77, 16), (140, 64), (24, 32), (40, 37),
                                   (16, 40), (9, 17)])
def test_transpose(isa, rng, shape, dtype):
    # rows and columns around the 4/8/16-lane widths: overlapping last tiles (in rows, in
    # columns), fewer rows or columns than lanes
    x = rng.standard_normal(shape).astype(dtype)
    ours, ref = k.vec_transpose(x), k.vec_transpose(x, reference=True)
    assert ours.shape == ref.shape == shape[::-1] and ours.dtype == dtype
    np.testing.assert_array_equal(ours, x.T)
    np.testing.assert_array_equal(ref, x.T)
    with pytest.raises(ValueError):
        k.vec_transpose(x.reshape(-1))


ROW_SHAPES = [(0, 5, 5), (3, 0, 4), (1, 1, 1), (5, 7, 9), (12, 16, 16), (12, 64, 256),
              (72, 72, 72), (9, 80, 83), (4, 33, 40), (6, 15, 15)]   # (rows, cols, row stride)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,ld", ROW_SHAPES)
def test_add_rows(isa, rng, rows, cols, ld, dtype):
    # strided rows (only the first cols of each are read or written), column counts around the
    # vector widths and the four-vector blocks; the sums add a row at a time, in row order, so
    # every ISA gives the scalar loop's bits
    x = rng.standard_normal((rows, ld)).astype(dtype)
    y = rng.standard_normal((rows, ld + 3)).astype(dtype)
    sums = rng.standard_normal(cols).astype(dtype)
    y_before, sums_before = y.copy(), sums.copy()
    expected_y = y.copy()
    expected_y[:, :cols] += x[:, :cols]
    expected_sums = sums.copy()
    for i in range(rows):
        expected_sums += x[i, :cols]
    for reference in (False, True):
        new_y, new_sums = k.vec_add_rows(x, cols, y, sums, reference=reference)
        np.testing.assert_array_equal(new_y, expected_y)
        np.testing.assert_array_equal(new_sums, expected_sums)
        only_y, none = k.vec_add_rows(x, cols, y=y, reference=reference)
        assert none is None
        np.testing.assert_array_equal(only_y, expected_y)
        none, only_sums = k.vec_add_rows(x, cols, sums=sums, reference=reference)
        assert none is None
        np.testing.assert_array_equal(only_sums, expected_sums)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(sums, sums_before)
    with pytest.raises(ValueError, match="cols"):
        k.vec_add_rows(x, ld + 1, y, None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,ld", ROW_SHAPES)
def test_add_bias_rows(isa, rng, rows, cols, ld, dtype):
    x = rng.standard_normal((rows, ld)).astype(dtype)
    bias = rng.standard_normal(cols).astype(dtype)
    for reference in (False, True):
        out = k.vec_add_bias_rows(x, cols, bias, reference=reference)
        assert out.shape == (rows, cols) and out.dtype == dtype
        np.testing.assert_array_equal(out, x[:, :cols] + bias)
    with pytest.raises(ValueError, match="bias"):
        k.vec_add_bias_rows(x, cols, np.zeros(cols + 1, dtype))
    for bad in (-1, ld + 1):
        with pytest.raises(ValueError, match="cols must be in"):
            k.vec_add_bias_rows(x, bad, bias)
        with pytest.raises(ValueError, match="cols must be in"):
            k.vec_add_rows(x, bad, y=np.zeros((rows, ld + 2), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [n for n in LENGTHS if n > 0] + [76, 140])
def test_softmax(isa, rng, n, dtype):
    x = vec(rng, n, dtype, scale=5.0)
    before = x.copy()
    ours, ref = k.vec_softmax(x), k.vec_softmax(x, reference=True)
    np.testing.assert_array_equal(x, before)    # out of place: the input is left alone
    e = np.exp(x.astype(np.float64) - x.max())
    rtol = 8e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=0)
    np.testing.assert_allclose(ours, e / e.sum(), rtol=rtol, atol=0)
    # in place (out = in): the same bits, the ragged end's overlapping vector read before the
    # whole vectors overwrite the lanes it shares with them
    np.testing.assert_array_equal(k.vec_softmax(x, in_place=True), ours)
    np.testing.assert_array_equal(k.vec_softmax(x, reference=True, in_place=True), ref)
    # the maximum at every position in turn: the first lane, the middle, the first lane of the
    # overlapping last vector (n - W, inside the last whole vector) for every vector width, the
    # last element
    overlap = {n - w for w in (4, 8, 16) if n > w and n % w}
    for pos in sorted({0, n // 2, n - 1} | overlap):
        big = x.copy()
        big[pos] = 1e4
        for in_place in (False, True):
            p = k.vec_softmax(big, in_place=in_place)
            assert p[pos] == pytest.approx(1.0) and p.sum() == pytest.approx(1.0)
    # 7 rows in one call: each row as it is on its own
    rows = (5.0 * rng.standard_normal((7, n))).astype(dtype)
    rows[2, -1] = 1e4
    for in_place in (False, True):
        p = k.vec_softmax(rows, in_place=in_place)
        assert p.shape == rows.shape
        for r in range(7):
            np.testing.assert_array_equal(p[r], k.vec_softmax(rows[r]))
    np.testing.assert_allclose(k.vec_softmax(rows, reference=True), p, rtol=rtol, atol=0)
    with pytest.raises(ValueError, match="1-D"):
        k.vec_softmax(rows.reshape(7, 1, n))
    with pytest.raises(ValueError, match="empty"):
        k.vec_softmax(np.zeros(0, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [n for n in LENGTHS if n > 0] + [64, 256])
def test_layernorm_row_and_its_backward(isa, rng, n, dtype):
    x = (vec(rng, n, dtype, scale=3.0) + dtype(50.0)).astype(dtype)   # a large mean to cancel
    w, b = vec(rng, n, dtype), vec(rng, n, dtype)
    out, mean, rstd = k.vec_layernorm_row(x, w, b, 1e-5)
    ref, mean_ref, rstd_ref = k.vec_layernorm_row(x, w, b, 1e-5, reference=True)
    x64 = x.astype(np.float64)
    mu, var = x64.mean(), x64.var()
    exact = (x64 - mu) / np.sqrt(var + 1e-5) * w + b
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    assert mean == pytest.approx(mu, rel=rtol) and mean_ref == pytest.approx(mu, rel=rtol)
    assert rstd == pytest.approx(1 / np.sqrt(var + 1e-5), rel=rtol)
    assert rstd_ref == pytest.approx(rstd, rel=rtol)
    np.testing.assert_allclose(out, exact, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol)
    dy, dx = vec(rng, n, dtype), vec(rng, n, dtype)
    got = k.vec_layernorm_row_backward(dx, dy, x, w, mean, rstd)
    want = k.vec_layernorm_row_backward(dx, dy, x, w, mean, rstd, reference=True)
    # the input gradient through the exact formula in float64
    xhat = (x64 - mean) * rstd
    dxhat = dy.astype(np.float64) * w
    grad = rstd * (dxhat - dxhat.mean() - xhat * (dxhat * xhat).mean())
    np.testing.assert_allclose(got, dx + grad, rtol=rtol, atol=rtol * 10)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 64, 77])
def test_layernorm_rows_are_each_row_alone(isa, rng, n, dtype):
    # 39 rows: the op's blocks of 32 rows, the kernel's groups of four interleaved rows and the
    # rows left; every row the same bits as the kernel gives it on its own
    x = (3 * rng.standard_normal((39, n)) + 5).astype(dtype)
    w, b = vec(rng, n, dtype), vec(rng, n, dtype)
    out, mean, rstd = rmt.ops.layernorm_forward(x, w, b, eps=1e-5)
    for r in range(39):
        row, m, s = k.vec_layernorm_row(x[r], w, b, 1e-5)
        np.testing.assert_array_equal(out[r], row)
        assert (mean[r], rstd[r]) == (dtype(m), dtype(s))
        # in place (out = x): the ragged end's overlapping vector is computed before the whole
        # vectors overwrite the lanes it shares with them
        np.testing.assert_array_equal(k.vec_layernorm_row(x[r], w, b, 1e-5, in_place=True)[0], row)


# (M, N, K): row blocks of 8 / 6 / 4 / 1, column blocks of four (AVX-512) or two vectors, then one
# block of the 1-3 whole vectors left, then scalar tails (N = 88: 5 float vectors + 8 on AVX-512,
# 11 double vectors = 4 + 4 + 3)
SMALL_GEMM_SHAPES = [(1, 1, 1), (3, 5, 2), (8, 16, 16), (9, 16, 76), (76, 80, 16), (76, 16, 76),
                     (13, 33, 7), (5, 48, 0), (11, 72, 9), (72, 64, 72), (7, 88, 5), (6, 56, 5),
                     (10, 48, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SMALL_GEMM_SHAPES)
def test_small_gemm(isa, rng, shape, dtype):
    M, N, K = shape
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c = rng.standard_normal((M, N)).astype(dtype)
    exact = 0.7 * (a.astype(np.float64) @ b.astype(np.float64))
    t = tol(dtype, K)
    a_t = np.ascontiguousarray(a.T)   # stored K x M: read in place with trans_a
    for args in [(), (c,)]:
        want = exact + (c if args else 0)
        for lhs, trans_a in [(a, False), (a_t, True)]:
            ours = k.small_gemm(lhs, b, *args, alpha=0.7, trans_a=trans_a)
            ref = k.small_gemm(lhs, b, *args, alpha=0.7, trans_a=trans_a, reference=True)
            np.testing.assert_allclose(ours, ref, **t)
            np.testing.assert_allclose(ours, want, **t)
    c_before = c.copy()
    k.small_gemm(a, b, c)
    np.testing.assert_array_equal(c, c_before)   # c is copied, not written
    with pytest.raises(ValueError, match="b has shape"):
        k.small_gemm(a, rng.standard_normal((K + 1, N)).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_relu_backward(isa, rng, n, dtype):
    x, dout, dinp = vec(rng, n, dtype), vec(rng, n, dtype), vec(rng, n, dtype)
    if n > 2:
        x[:2] = [0.0, -0.0]   # the gradient at 0 is 0, as PyTorch's
    ours = k.vec_relu_backward(dinp, dout, x)
    np.testing.assert_array_equal(ours, k.vec_relu_backward(dinp, dout, x, reference=True))
    np.testing.assert_array_equal(ours, dinp + np.where(x > 0, dout, dtype(0)))


def _gelu64(x, tanh_approximation):
    from math import erf, sqrt, tanh, pi
    if tanh_approximation:
        return np.array([0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v ** 3))) for v in x])
    return np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x])


@pytest.mark.parametrize("tanh_approximation", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_gelu(isa, rng, n, dtype, tanh_approximation):
    x = vec(rng, n, dtype, scale=3.0)
    if n > 3:
        x[:3] = [0.0, -12.0, 12.0]   # the flat tails and the origin
    ours = k.vec_gelu(x, tanh_approximation)
    ref = k.vec_gelu(x, tanh_approximation, reference=True)
    exact = _gelu64(x.astype(np.float64), tanh_approximation)
    eps = np.finfo(dtype).eps
    assert ours.dtype == dtype and ours.shape == (n,)
    # 1 + erf(x) cancels for negative x: the error is a few ulp of x, not of the result
    bound = 16 * eps * (np.abs(exact) + np.abs(x.astype(np.float64)))
    assert np.all(np.abs(ours - ref.astype(np.float64)) <= bound)
    assert np.all(np.abs(ours - exact) <= bound)


@pytest.mark.parametrize("tanh_approximation", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_gelu_backward_accumulates_the_derivative(isa, rng, n, dtype, tanh_approximation):
    x, dout, dinp = vec(rng, n, dtype, scale=3.0), vec(rng, n, dtype), vec(rng, n, dtype)
    before = dinp.copy()
    ours = k.vec_gelu_backward(dinp, dout, x, tanh_approximation)
    ref = k.vec_gelu_backward(dinp, dout, x, tanh_approximation, reference=True)
    np.testing.assert_array_equal(dinp, before)   # the binding works on a copy
    # central differences of the float64 formula
    x64, h = x.astype(np.float64), 1e-6
    deriv = (_gelu64(x64 + h, tanh_approximation) - _gelu64(x64 - h, tanh_approximation)) / (2 * h)
    expected = before.astype(np.float64) + dout.astype(np.float64) * deriv
    eps = np.finfo(dtype).eps
    bound = 32 * eps * (np.abs(expected) + np.abs(dout * x) + 1)
    assert np.all(np.abs(ours - ref.astype(np.float64)) <= bound)
    assert np.all(np.abs(ours - expected) <= np.maximum(bound, 1e-8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_scale(isa, rng, n, dtype):
    x = vec(rng, n, dtype)
    ours, ref = k.vec_scale(x, 0.3), k.vec_scale(x, 0.3, reference=True)
    np.testing.assert_array_equal(ours, ref)   # one rounding either way
    np.testing.assert_array_equal(ours, x * dtype(0.3))


def adamw_numpy(param, grad, m, v, lr, beta1, beta2, eps, decay, bc1, bc2_sqrt):
    param, grad, m, v = (a.astype(np.float64) for a in (param, grad, m, v))
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    param = param * decay - (lr / bc1) * m / (np.sqrt(v) / bc2_sqrt + eps)
    return param, m, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_adamw(isa, rng, n, dtype):
    param, grad, m = vec(rng, n, dtype), vec(rng, n, dtype), vec(rng, n, dtype, 0.1)
    v = np.abs(vec(rng, n, dtype, 0.01))
    step = 3
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay_factor=1 - 1e-2 * 0.1,
              bias_correction1=1 - 0.9**step, bias_correction2_sqrt=np.sqrt(1 - 0.999**step))
    inputs = [a.copy() for a in (param, grad, m, v)]
    ours = k.vec_adamw(param, grad, m, v, **hp)
    ref = k.vec_adamw(param, grad, m, v, **hp, reference=True)
    for a, b in zip(inputs, (param, grad, m, v)):
        np.testing.assert_array_equal(a, b)   # inputs untouched
    expected = adamw_numpy(param, grad, m, v, *hp.values())
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, o, r, e in zip(("param", "m", "v"), ours, ref, expected):
        assert o.dtype == dtype and o.shape == (n,)
        np.testing.assert_allclose(o, r, rtol=rtol, atol=rtol * 1e-2, err_msg=name)
        np.testing.assert_allclose(o, e, rtol=rtol, atol=rtol * 1e-2, err_msg=name)


def test_kernels_reject_bad_input():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="y has shape"):
        k.vec_dot(x, np.ones(7, np.float32))
    with pytest.raises(TypeError, match="y must have dtype float32"):
        k.vec_dot(x, np.ones(8))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        k.vec_scale(np.ones(8, np.int32), 2.0)
    with pytest.raises(ValueError, match="x is empty"):
        k.vec_max(np.ones(0, np.float64))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        k.vec_scale(np.ones(16)[::2], 2.0)
    with pytest.raises(ValueError, match="x must have 1 dimensions"):
        k.vec_exp_shift_sum(np.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match="v has shape"):
        k.vec_adamw(x, x, x, np.ones(9, np.float32), 1e-3, 0.9, 0.999, 1e-8, 1.0, 0.1, 0.1)


def test_fma_peak(isa):
    flops_per_second = rmt.fma_peak_gflops(threads=1, seconds=0.02)
    assert 0.1 < flops_per_second < 1e5   # GFLOP/s: positive and finite
    assert rmt.fma_peak_gflops(threads=2, seconds=0.02) > 0.1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        rmt.fma_peak_gflops(threads=0)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        rmt.fma_peak_gflops(seconds=0.0)
