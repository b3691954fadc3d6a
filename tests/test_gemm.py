"""rmt.gemm against the scalar reference and numpy float64: awkward sizes (tails of the MR x NR
register tile, more than one MC block, KC slice and NC block), all four orientations, alpha/beta,
float32 and float64, every ISA, 1 and 2 threads; and bad input."""
import functools
import itertools

import numpy as np
import pytest

import rmt

SIZES = [1, 7, 33, 127, 300]   # 300 > MC and > KC of the AVX-512 and scalar blocking (144, 256)
SMALL = [1, 7, 33, 127]
ORIENTATIONS = list(itertools.product([False, True], repeat=2))   # (trans_a, trans_b)
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=[1, 2])
def threads(request):
    previous = rmt.get_num_threads()
    rmt.set_num_threads(request.param)
    yield request.param
    rmt.set_num_threads(previous)


def operands(rng, M, N, K, trans_a, trans_b, dtype):
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    return a, b


def exact(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None):
    """alpha op(a) op(b) + beta c in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if beta != 0.0:
        out += beta * c.astype(np.float64)
    return out


def tol(dtype, K):
    # Standard normal inputs: sums of K products carry about eps * K absolute rounding error.
    eps = np.finfo(dtype).eps
    return dict(rtol=16 * eps, atol=16 * eps * K)


@functools.lru_cache(maxsize=None)
def case(M, N, K, trans_a, trans_b, dtype):
    """Operands and their exact product, shared by every ISA and thread count."""
    rng = np.random.default_rng([M, N, K, trans_a, trans_b, np.dtype(dtype).itemsize])
    a, b = operands(rng, M, N, K, trans_a, trans_b, dtype)
    return a, b, exact(a, b, trans_a, trans_b)


# Every combination on one thread; on two, the shapes big enough to be split between threads.
SHAPES_BY_THREADS = {1: list(itertools.product(SIZES, repeat=3)),
                     2: list(itertools.product([33, 300], [7, 300], [1, 127, 300]))}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", ORIENTATIONS)
def test_gemm_matches_numpy_all_sizes(isa, threads, trans_a, trans_b, dtype):
    for M, N, K in SHAPES_BY_THREADS[threads]:
        a, b, expected = case(M, N, K, trans_a, trans_b, dtype)
        c = rmt.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        assert c.dtype == dtype and c.shape == (M, N)
        np.testing.assert_allclose(c, expected, **tol(dtype, K), err_msg=f"M={M} N={N} K={K} trans_a={trans_a} trans_b={trans_b}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", ORIENTATIONS)
def test_gemm_matches_reference(isa, rng, trans_a, trans_b, dtype):
    for M, N, K in itertools.product(SMALL, repeat=3):
        a, b = operands(rng, M, N, K, trans_a, trans_b, dtype)
        c0 = rng.standard_normal((M, N)).astype(dtype)
        kw = dict(trans_a=trans_a, trans_b=trans_b, alpha=-0.75, beta=1.25)
        ours = rmt.gemm(a, b, c0.copy(), **kw)
        ref = rmt.gemm_reference(a, b, c0.copy(), **kw)
        np.testing.assert_allclose(ours, ref, **tol(dtype, K), err_msg=f"M={M} N={N} K={K}")


def test_reference_matches_numpy(rng):
    for trans_a, trans_b in ORIENTATIONS:
        a, b = operands(rng, 33, 17, 300, trans_a, trans_b, np.float64)
        c0 = rng.standard_normal((33, 17))
        ref = rmt.gemm_reference(a, b, c0.copy(), trans_a, trans_b, alpha=0.5, beta=-2.0)
        np.testing.assert_allclose(ref, exact(a, b, trans_a, trans_b, 0.5, -2.0, c0),
                                   rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", ORIENTATIONS)
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -1.5), (2.0, 0.0), (0.0, 0.5), (0.0, 0.0)])
def test_gemm_alpha_beta_in_place(isa, threads, rng, trans_a, trans_b, alpha, beta, dtype):
    M, N, K = 37, 45, 300   # K > KC: the second K slice must accumulate, not reapply beta
    a, b = operands(rng, M, N, K, trans_a, trans_b, dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)
    c = c0.copy()
    out = rmt.gemm(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    assert out is c   # written in place and returned
    np.testing.assert_allclose(c, exact(a, b, trans_a, trans_b, alpha, beta, c0), **tol(dtype, K))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", [(7, 33, 5), (300, 127, 300), (1, 1, 1)])
def test_gemm_beta_zero_overwrites_nan(isa, threads, rng, M, N, K, dtype):
    for trans_a, trans_b in ORIENTATIONS:
        a, b = operands(rng, M, N, K, trans_a, trans_b, dtype)
        for alpha in (1.0, 0.0):
            c = np.full((M, N), np.nan, dtype=dtype)
            rmt.gemm(a, b, c, trans_a, trans_b, alpha=alpha, beta=0.0)
            assert np.isfinite(c).all()
            np.testing.assert_allclose(c, exact(a, b, trans_a, trans_b, alpha), **tol(dtype, K))
            c = np.full((M, N), np.nan, dtype=dtype)
            rmt.gemm_reference(a, b, c, trans_a, trans_b, alpha=alpha, beta=0.0)
            assert np.isfinite(c).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_gemm_epilogue_adds_the_bias_once_and_relus_the_finished_sums(isa, threads, rng, dtype,
                                                                       relu):
    # Sizes past the active blocking (two MC blocks, three K slices, partial tiles): the bias is
    # added by the first K slice only, on full and partial tiles, over any beta and over NaN; the
    # ReLU by the last only (on a partial sum it would clip values that later slices bring back
    # above zero). The fast path and the reference.
    blk = rmt.gemm_blocking(dtype)
    M, N, K = blk["mc"] + blk["mr"] + 1, 2 * blk["nr"] + 3, 2 * blk["kc"] + 5
    for trans_a, trans_b in ORIENTATIONS:
        a, b = operands(rng, M, N, K, trans_a, trans_b, dtype)
        bias = rng.standard_normal(N).astype(dtype)
        c0 = rng.standard_normal((M, N)).astype(dtype)
        for beta, with_bias in ((0.0, True), (-0.5, True), (0.0, False)):
            want = exact(a, b, trans_a, trans_b, 0.75, beta, c0) + (bias if with_bias else 0)
            if relu:
                assert 0.3 < (want > 0).mean() < 0.7   # both sides of the ReLU are exercised
                want = np.maximum(want, 0.0)
            for fn in (rmt.gemm, rmt.gemm_reference):
                c = c0.copy() if beta else np.full((M, N), np.nan, dtype)
                fn(a, b, c, trans_a, trans_b, alpha=0.75, beta=beta,
                   bias=bias if with_bias else None, relu=relu)
                np.testing.assert_allclose(c, want, **tol(dtype, K))
    # nothing to multiply (alpha = 0): C = beta C + bias, then the ReLU; a NaN becomes 0 there,
    # as in rmt.ops.relu_forward
    c_in = c0.copy()
    c_in[0, 0] = np.nan
    c = rmt.gemm(a, b, c_in, trans_a, trans_b, alpha=0.0, beta=2.0, bias=bias, relu=relu)
    want = 2.0 * c0 + bias
    want[0, 0] = np.nan
    if relu:
        want = np.where(want > 0, want, 0.0)
    np.testing.assert_allclose(c, want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"bias has shape \(3,\), expected \(%d,\)" % N):
        rmt.gemm(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias[:3], relu=relu)
    with pytest.raises(TypeError, match="bias must have dtype"):
        rmt.gemm(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias.astype(np.int32), relu=relu)


def test_gemm_relu_turns_nan_into_zero_like_relu_forward(isa, rng):
    a = rng.standard_normal((20, 40)).astype(np.float32)
    b = rng.standard_normal((40, 70)).astype(np.float32)
    a[3, 5] = np.nan
    fused = rmt.gemm(a, b, relu=True)
    np.testing.assert_array_equal(fused, rmt.ops.relu_forward(rmt.gemm(a, b)))
    assert (fused[3] == 0).all() and np.isfinite(fused).all()


def test_gemm_wide_n_crosses_nc_blocks(isa, rng):
    # N > NC (3072): more than one column block of packed B; then with the epilogue over two K
    # slices, whose bias and ReLU every column block applies on its own first / last slice.
    for trans_a, trans_b in ORIENTATIONS:
        a, b = operands(rng, 9, 3100, 17, trans_a, trans_b, np.float32)
        c = rmt.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        np.testing.assert_allclose(c, exact(a, b, trans_a, trans_b), **tol(np.float32, 17))
    K = rmt.gemm_blocking()["kc"] + 7
    a, b = operands(rng, 9, 3100, K, False, True, np.float32)
    bias = rng.standard_normal(3100).astype(np.float32)
    c = rmt.gemm(a, b, trans_b=True, bias=bias, relu=True)
    np.testing.assert_allclose(c, np.maximum(exact(a, b, False, True) + bias, 0),
                               **tol(np.float32, K))


def test_gemm_wide_n_at_two_threads_is_right_every_time(isa, rng):
    # Past NC columns, the second column block hands the B panels out afresh, and a thread's new
    # panels can be ones the other thread is still multiplying with: without a barrier between
    # the blocks 4% of these products had wrong columns (13 of 300 on the avx2 kernel, a Zen 4
    # machine). Many repeats of a small, fast product give the race its chances.
    K = rmt.gemm_blocking()["kc"] + 7
    a = rng.standard_normal((9, K)).astype(np.float32)
    b = rng.standard_normal((3100, K)).astype(np.float32)
    want = exact(a, b, False, True)
    previous = rmt.get_num_threads()
    rmt.set_num_threads(2)
    try:
        for _ in range(300):
            np.testing.assert_allclose(rmt.gemm(a, b, trans_b=True), want, **tol(np.float32, K))
    finally:
        rmt.set_num_threads(previous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_row_split_at_two_threads_crosses_blocks_slices_and_column_blocks(isa, rng, dtype):
    # A transposed A with more rows than B has columns: two threads split op(A)'s rows (each
    # packs all of B itself). Each thread's rows cross an MC block boundary (the second thread's
    # end in a ragged MR tile), over three K slices, with the epilogue (bias once, ReLU on the
    # finished sums) and beta != 0; then rows past NC against more than NC columns, so each
    # thread walks two column blocks of its own, the second with its part of the bias. The
    # untransposed orientations take the panel split on the same operands.
    blk = rmt.gemm_blocking(dtype)
    M, N, K = 2 * blk["mc"] + 3 * blk["mr"] + 5, 2 * blk["nr"] + 3, 2 * blk["kc"] + 5
    previous = rmt.get_num_threads()
    rmt.set_num_threads(2)
    try:
        for trans_a, trans_b in ORIENTATIONS:
            a, b = operands(rng, M, N, K, trans_a, trans_b, dtype)
            bias = rng.standard_normal(N).astype(dtype)
            c0 = rng.standard_normal((M, N)).astype(dtype)
            c = rmt.gemm(a, b, c0.copy(), trans_a, trans_b, alpha=0.75, beta=-0.5, bias=bias,
                         relu=True)
            want = np.maximum(exact(a, b, trans_a, trans_b, 0.75, -0.5, c0) + bias, 0.0)
            np.testing.assert_allclose(c, want, **tol(dtype, K))
        nc = blk["nc"]
        for trans_b in (False, True):
            a, b = operands(rng, nc + 41, nc + 29, 3, True, trans_b, dtype)
            bias = rng.standard_normal(nc + 29).astype(dtype)
            c = rmt.gemm(a, b, trans_a=True, trans_b=trans_b, bias=bias)
            np.testing.assert_allclose(c, exact(a, b, True, trans_b) + bias, **tol(dtype, 3))
    finally:
        rmt.set_num_threads(previous)


def test_gemm_leaves_inputs_unchanged(rng):
    a, b = operands(rng, 33, 7, 127, True, False, np.float32)
    a0, b0 = a.copy(), b.copy()
    rmt.gemm(a, b, trans_a=True)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("fn", [rmt.gemm, rmt.gemm_reference])
def test_gemm_rejects_bad_input(fn):
    a = np.ones((4, 5), np.float32)
    b = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"inner dimensions.*op\(a\) is 4x5, op\(b\) is 3x5"):
        fn(a, b, trans_b=True)
    with pytest.raises(ValueError, match=r"inner dimensions.*op\(a\) is 5x4"):
        fn(a, b, trans_a=True)
    with pytest.raises(ValueError, match="c has shape"):
        fn(a, b, np.ones((4, 4), np.float32))
    with pytest.raises(TypeError, match="a must have dtype float32 or float64"):
        fn(a.astype(np.int64), b)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        fn(a, b.astype(np.float64))
    with pytest.raises(TypeError, match="c must have dtype float32"):
        fn(a, b, np.ones((4, 3)))
    with pytest.raises(TypeError, match="a must be a numpy array"):
        fn(a.tolist(), b)
    with pytest.raises(ValueError, match="a must be C-contiguous"):
        fn(np.ones((5, 4), np.float32).T, b)
    with pytest.raises(ValueError, match="b must be C-contiguous"):
        fn(a, np.ones((5, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="c must be C-contiguous"):
        fn(a, b, np.ones((3, 4), np.float32).T)
    with pytest.raises(ValueError, match="b must have 2 dimensions"):
        fn(a, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="a is empty"):
        fn(np.ones((0, 5), np.float32), b)
    c = np.ones((4, 3), np.float32)
    c.flags.writeable = False
    with pytest.raises(ValueError, match="c must be writeable"):
        fn(a, b, c)


def test_gemm_blocking_describes_the_active_kernel(isa):
    b = rmt.gemm_blocking()
    assert (b["mr"], b["nr"]) == rmt.gemm_tile()
    assert b["kc"] > 0 and b["nc"] > 0
    assert b["mc"] > 0 and b["mc"] % b["mr"] == 0   # blocks are whole register tiles
    f64 = rmt.gemm_blocking(np.float64)
    assert f64["mc"] % f64["mr"] == 0
    with pytest.raises(TypeError, match="float32 or float64"):
        rmt.gemm_blocking(np.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", ORIENTATIONS)
@pytest.mark.parametrize("b_panels", [3, 34])
def test_gemm_crosses_every_block_of_the_active_blocking(isa, threads, rng, trans_a, trans_b, dtype,
                                                         b_panels):
    # Sizes from the active ISA's own blocking (its KC is 512 on AVX2, 256 elsewhere), so that
    # every ISA runs three K slices (the later ones accumulate), two MC blocks with a ragged
    # last one, and a partial register tile in both directions; beta != 0 on top. Against 3 B
    # panels an untransposed A is read in place (its ragged last panel packed), against 34 (more
    # than 16 per thread) it is packed.
    b = rmt.gemm_blocking(dtype)
    M, N, K = b["mc"] + b["mr"] + 1, (b_panels - 1) * b["nr"] + 3, 2 * b["kc"] + 5
    a, bm = operands(rng, M, N, K, trans_a, trans_b, dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)
    c = c0.copy()
    rmt.gemm(a, bm, c, trans_a=trans_a, trans_b=trans_b, alpha=0.75, beta=-0.5)
    np.testing.assert_allclose(c, exact(a, bm, trans_a, trans_b, 0.75, -0.5, c0), **tol(dtype, K))
