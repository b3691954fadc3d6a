"""The decoder model kinds against the PyTorch reference (tests/torch_reference.py) on the same
weights: loss, logits, every parameter gradient and the initial memory's gradient, over unrolls of
several segments; then properties that need no reference."""
import numpy as np
import pytest
import torch

import rmt
from rmt import _core
import torch_reference as ref

BASE = dict(vocab_size=13, d_model=16, n_layers=2, n_heads=2, d_ff=24, segment_len=5,
            dropout=0.0)


def make_pair(cfg, seed=0):
    """Our model and float64 torch copies of its (random, large) weights."""
    model = _core.Model(cfg, seed)
    model.training = False
    params = ref.random_params(cfg, seed=seed)
    ours = model.parameters()
    assert list(ours) == list(params), "parameter names or order differ from docs/MODELS.md"
    for name, t in params.items():
        assert ours[name].shape == tuple(t.shape), name
        ours[name][...] = t.detach().numpy().astype(np.float32)
        # The reference runs in float64 on exactly the float32 values the engine holds.
        with torch.no_grad():
            t.copy_(torch.from_numpy(ours[name].astype(np.float64)))
    return model, params


def random_batch(cfg, segments, batch=2, seed=1, ignore=True):
    gen = np.random.default_rng(seed)
    L = segments * cfg["segment_len"]
    tokens = gen.integers(0, cfg["vocab_size"], (batch, L)).astype(np.int64)
    targets = gen.integers(0, cfg["vocab_size"], (batch, L)).astype(np.int64)
    if ignore:
        targets[0, 1] = -100
        targets[1, -2] = -100
    return tokens, targets


def compare(cfg, segments=3, bptt_depth=None, loss_mask=None, init_memory=None, batch=2):
    model, params = make_pair(cfg)
    tokens, targets = random_batch(cfg, segments, batch)
    model.zero_grad()
    loss, logits, init_grad = model.loss_and_grad(
        tokens, targets, loss_mask=loss_mask, bptt_depth=bptt_depth, return_logits=True,
        init_memory=init_memory)
    mem = None
    if init_memory is not None:
        mem = torch.tensor(init_memory.astype(np.float64), requires_grad=True)
    mask_t = None if loss_mask is None else torch.tensor(loss_mask.astype(np.float64))
    ref_loss, ref_logits = ref.forward_loss(cfg, params, torch.tensor(tokens), torch.tensor(targets),
                                            mask_t, bptt_depth, mem)
    leaves = list(params.values()) + ([mem] if mem is not None else [])
    grads = torch.autograd.grad(ref_loss, leaves, allow_unused=True)
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-4, err_msg="loss")
    np.testing.assert_allclose(logits, ref_logits.detach().numpy(), rtol=1e-3, atol=1e-3,
                               err_msg="logits")
    ours = model.grads()
    for (name, p), g in zip(params.items(), grads):
        expected = np.zeros(p.shape) if g is None else g.numpy()
        scale = max(np.abs(expected).max(), 1e-3)
        np.testing.assert_allclose(ours[name], expected, rtol=2e-3, atol=2e-4 * scale,
                                   err_msg=f"gradient of {name}")
    if mem is not None:
        expected = np.zeros(mem.shape) if grads[-1] is None else grads[-1].numpy()
        np.testing.assert_allclose(init_grad, expected, rtol=2e-3, atol=2e-5,
                                   err_msg="gradient of init_memory")
    return model, init_grad


def test_transformer_matches_reference():
    compare(dict(BASE, kind="transformer"))


def test_memtr_matches_reference():
    compare(dict(BASE, kind="memtr", num_mem_tokens=3))


@pytest.mark.parametrize("mem_len", [3, 5, 8])      # smaller than, equal to, larger than T = 5
@pytest.mark.parametrize("clamp_len", [-1, 2])
def test_transformer_xl_matches_reference(mem_len, clamp_len):
    compare(dict(BASE, kind="txl", mem_len=mem_len, clamp_len=clamp_len), segments=4)


def test_transformer_xl_same_length_eval_matches_reference():
    compare(dict(BASE, kind="txl", mem_len=4, same_length=True), segments=3)


def test_untied_rel_bias_and_narrow_heads_match_reference():
    compare(dict(BASE, kind="txl", mem_len=5, untie_rel_bias=True, n_heads=4, d_head=3))


@pytest.mark.parametrize("bptt_depth", [0, 1, 2, None])
def test_rmt_matches_reference(bptt_depth):
    compare(dict(BASE, kind="rmt", num_mem_tokens=3), segments=4, bptt_depth=bptt_depth)


@pytest.mark.parametrize("bptt_depth", [1, None])
def test_rmt_with_transformer_xl_cache_matches_reference(bptt_depth):
    compare(dict(BASE, kind="rmt", num_mem_tokens=2, mem_len=5, clamp_len=3), segments=3,
            bptt_depth=bptt_depth)


@pytest.mark.parametrize("extra", [dict(kind="rmt", num_mem_tokens=3),
                                   dict(kind="memtr", num_mem_tokens=3),
                                   dict(kind="rmt", num_mem_tokens=2, mem_len=5)])
def test_one_layer_memory_models_match_reference(extra):
    # With one layer, the layer that computes only the rows something reads is also the first:
    # it reads h0, and memtr's memory gets its gradient through keys and values only.
    compare(dict(BASE, n_layers=1, **extra), segments=3)


@pytest.mark.parametrize("bptt_depth", [0, 2, None])
def test_rmt_initial_memory_gradient_matches_reference(bptt_depth):
    cfg = dict(BASE, kind="rmt", num_mem_tokens=3)
    init = np.random.default_rng(5).standard_normal((2, 3, 16)).astype(np.float32)
    compare(cfg, segments=3, bptt_depth=bptt_depth, init_memory=init)


def test_loss_mask_weights_match_reference():
    cfg = dict(BASE, kind="rmt", num_mem_tokens=2)
    mask = np.zeros((2, 15), np.float32)
    mask[:, 10:] = 1.0
    mask[1, 12] = 2.5
    compare(cfg, segments=3, loss_mask=mask)


# ---- properties that need no reference ----

@pytest.mark.parametrize("kind,extra", [("transformer", {}), ("memtr", dict(num_mem_tokens=2)),
                                        ("txl", dict(mem_len=5)), ("rmt", dict(num_mem_tokens=2)),
                                        ("rmt", dict(num_mem_tokens=2, mem_len=5))])
def test_changing_a_later_token_never_changes_an_earlier_logit(kind, extra):
    # For RMT this also checks that the read block does not see its segment: if it did, the
    # first token of a segment would see later tokens through the read rows of layer 1.
    cfg = dict(BASE, kind=kind, n_layers=3, **extra)
    model = _core.Model(cfg, 3)
    model.training = False
    tokens, targets = random_batch(cfg, 3)
    _, base, _ = model.loss_and_grad(tokens, targets, return_logits=True)
    for pos in [1, 5, 7, 14]:
        changed = tokens.copy()
        changed[:, pos] = (changed[:, pos] + 1) % cfg["vocab_size"]
        _, logits, _ = model.loss_and_grad(changed, targets, return_logits=True)
        np.testing.assert_array_equal(logits[:, :pos], base[:, :pos],
                                      err_msg=f"{kind}: token {pos} changed an earlier logit")
        assert not np.allclose(logits[:, pos:], base[:, pos:]), "the change had no effect at all"
    model.zero_grad()


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_initial_memory_gets_no_gradient_from_a_loss_more_than_k_segments_later(depth):
    cfg = dict(BASE, kind="rmt", num_mem_tokens=2)
    model = _core.Model(cfg, 4)
    model.training = False
    tokens, targets = random_batch(cfg, 4, ignore=False)
    T = cfg["segment_len"]
    for t in range(4):
        mask = np.zeros(tokens.shape, np.float32)
        mask[:, t * T:(t + 1) * T] = 1.0
        model.zero_grad()
        _, _, init_grad = model.loss_and_grad(tokens, targets, loss_mask=mask, bptt_depth=depth)
        if t < depth:
            assert np.abs(init_grad).max() > 1e-6, f"loss of segment {t} must reach the memory"
        else:
            assert np.abs(init_grad).max() == 0.0, f"loss of segment {t} leaked past depth {depth}"
            assert np.abs(model.grads()["mem_tokens"]).max() == 0.0


@pytest.mark.parametrize("kind,extra", [("txl", {}), ("rmt", dict(num_mem_tokens=2))])
def test_transformer_xl_cache_carries_no_gradient(kind, extra):
    # The engine matches the reference that detaches the cache, and that detach matters: with the
    # loss on the last segment only, a cache that carried gradient would change the gradients.
    cfg = dict(BASE, kind=kind, mem_len=5, **extra)
    model, params = make_pair(cfg)
    tokens, targets = random_batch(cfg, 3, ignore=False)
    mask = np.zeros(tokens.shape, np.float32)
    mask[:, 10:] = 1.0
    model.zero_grad()
    model.loss_and_grad(tokens, targets, loss_mask=mask, bptt_depth=0)
    name = "layers.0.ff.fc1.weight"
    args = (cfg, params, torch.tensor(tokens), torch.tensor(targets), torch.tensor(mask), 0)
    detached = torch.autograd.grad(ref.forward_loss(*args)[0], params[name])[0].numpy()
    live = torch.autograd.grad(ref.forward_loss(*args, detach_cache=False)[0], params[name])[0].numpy()
    assert np.abs(detached - live).max() > 1e-3 * np.abs(live).max(), "the test cannot tell"
    np.testing.assert_allclose(model.grads()[name], detached, rtol=2e-3,
                               atol=2e-4 * np.abs(detached).max())


def test_dropout_same_seed_same_result_and_different_seed_differs():
    cfg = dict(BASE, kind="rmt", num_mem_tokens=2, dropout=0.2)
    tokens, targets = random_batch(cfg, 3)
    results = []
    for seed in [7, 7, 8]:
        model = _core.Model(cfg, 0)
        model.training = True
        model.set_dropout_seed(seed)
        loss, _, _ = model.loss_and_grad(tokens, targets)
        results.append((loss, model.flat_grads.copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][0] != results[2][0]


def assert_directional_derivative(loss, theta, grad, direction, trial):
    """grad . direction against central differences of loss() with the parameters theta (the
    model's flat view) moved along direction, at two step sizes: a step that crosses a ReLU's
    kink is off at one of them, a wrong gradient (a wrong dropout mask, say) at both. theta is
    left as it was."""
    base = theta.copy()
    fds = []
    for eps in (1e-4, 3e-5):
        theta[...] = base + eps * direction
        up = loss()
        theta[...] = base - eps * direction
        down = loss()
        theta[...] = base
        fds.append((up - down) / (2 * eps))
    an = float(grad.astype(np.float64) @ direction)
    assert min(abs(fd - an) for fd in fds) <= 1e-2 * abs(an) + 5e-3, (trial, fds, an)


def test_gradients_with_dropout_match_finite_differences():
    # With dropout on, the feed-forward ReLU's backward masks by the stored activation after its
    # dropout (the GEMM applies the ReLU, and no pre-activation is kept): a dropped unit has no
    # gradient and a kept one keeps its sign. Directional derivatives of the loss under a fixed
    # dropout seed against central differences (float32, so a loose tolerance; a step of 1e-4
    # rarely crosses a ReLU's kink, 1e-3 did; a wrong mask is off by far more).
    cfg = dict(BASE, kind="rmt", num_mem_tokens=2, dropout=0.3, d_ff=40)
    model, _ = make_pair(cfg)
    model.training = True
    tokens, targets = random_batch(cfg, 2)
    theta = model.flat_parameters

    def loss():
        model.set_dropout_seed(11)
        model.zero_grad()
        return model.loss_and_grad(tokens, targets)[0]

    loss()
    grad = model.flat_grads.copy()
    base = theta.copy()
    gen = np.random.default_rng(3)
    params = model.parameters()
    for trial in range(5):
        direction = np.zeros_like(base)
        for name, view in params.items():   # the feed-forward weights, which the mask gates
            if ".ff." in name:
                lo = (view.ctypes.data - theta.ctypes.data) // theta.itemsize
                direction[lo:lo + view.size] = gen.standard_normal(view.size)
        assert_directional_derivative(loss, theta, grad, direction, trial)


@pytest.mark.parametrize("extra", [dict(kind="rmt", num_mem_tokens=2),
                                   dict(kind="txl", mem_len=3),
                                   dict(kind="rmt", num_mem_tokens=2, mem_len=3)],
                         ids=["rmt", "txl", "txl+rmt"])
def test_attention_maps_of_a_stream_match_the_reference(extra):
    cfg = dict(BASE, **extra)
    model, params = make_pair(cfg)
    tokens, targets = random_batch(cfg, 3)
    ref.PROBS_RECORDER = recorded = []
    try:
        ref.forward_loss(cfg, params, torch.tensor(tokens), torch.tensor(targets))
    finally:
        ref.PROBS_RECORDER = None
    L, T = cfg["n_layers"], cfg["segment_len"]
    assert len(recorded) == 3 * L
    state = model.init_stream(tokens.shape[0])
    for s in range(3):
        model.step(state, tokens[:, s * T:(s + 1) * T])
        for layer in range(L):
            ours = model.attention(state, layer)
            want = recorded[s * L + layer].numpy()
            assert ours.shape == want.shape, (s, layer)
            np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"segment {s} layer {layer}")
    with pytest.raises(IndexError, match="layer"):
        model.attention(state, L)
    with pytest.raises(ValueError, match="no segment"):
        model.attention(model.init_stream(2), 0)


@pytest.mark.parametrize("extra", [dict(kind="rmt", num_mem_tokens=2),
                                   dict(kind="txl", mem_len=3),
                                   dict(kind="memtr", num_mem_tokens=2),
                                   dict(kind="transformer")],
                         ids=["rmt", "txl", "memtr", "transformer"])
def test_a_training_call_leaves_nothing_behind_for_the_next(extra):
    # Training calls reuse the last call's activation buffers. A model that has run calls of
    # other shapes, with and without dropout, and an evaluation (which frees them) must give
    # exactly what a fresh model gives for the same call, with dropout on and off.
    cfg = dict(BASE, dropout=0.2, **extra)
    tokens, targets = random_batch(cfg, 3, batch=3, seed=5)

    def run(model, training):
        model.training = training
        model.set_dropout_seed(11)
        model.zero_grad()
        loss, _, _ = model.loss_and_grad(tokens, targets, bptt_depth=1)
        return loss, model.flat_grads.copy()

    used = _core.Model(cfg, 0)
    for training in (True, False):
        want_loss, want_grads = run(_core.Model(cfg, 0), training)
        for segments, batch, mode in [(4, 2, True), (2, 5, False), (3, 3, not training),
                                      (1, 2, True)]:
            used.training = mode
            t, y = random_batch(cfg, segments, batch=batch, seed=segments)
            used.loss_and_grad(t, y)
        used.training = False
        used.forward(tokens)            # evaluation frees the kept buffers ...
        used.training = True
        used.loss_and_grad(*random_batch(cfg, 5, batch=4, seed=9))   # ... a larger call regrows
        loss, grads = run(used, training)
        assert loss == want_loss
        np.testing.assert_array_equal(grads, want_grads)


@pytest.mark.parametrize("extra", [dict(kind="memtr", num_mem_tokens=2),
                                   dict(kind="rmt", num_mem_tokens=2, mem_len=4),
                                   dict(kind="rmt_encoder", num_mem_tokens=2, num_classes=3)])
def test_gradients_with_dropout_match_finite_differences_along_every_parameter(extra):
    # The last layer runs only the rows something reads, and with dropout it draws its masks for
    # those rows only; the backward must use the same masks. Directional derivatives along all
    # parameters at once under a fixed dropout seed, against central differences at two step
    # sizes (as above: a kink crossed at one step is not crossed at the other).
    cfg = dict(BASE, dropout=0.3, **extra)
    encoder = cfg["kind"] == "rmt_encoder"
    model = _core.Model(cfg, 0)
    model.training = True
    gen = np.random.default_rng(4)
    tokens = gen.integers(1, cfg["vocab_size"], (2, 3 * cfg["segment_len"])).astype(np.int64)
    if encoder:
        labels = np.array([0, 2], np.int64)
    else:
        targets = gen.integers(0, cfg["vocab_size"], tokens.shape).astype(np.int64)
    theta = model.flat_parameters

    def loss():
        model.set_dropout_seed(5)
        model.zero_grad()
        if encoder:
            return model.classify_loss_and_grad(tokens, labels)[0]
        return model.loss_and_grad(tokens, targets)[0]

    loss()
    grad = model.flat_grads.copy()
    base = theta.copy()
    for trial in range(3):
        direction = gen.standard_normal(base.size).astype(np.float32)
        assert_directional_derivative(loss, theta, grad, direction, trial)
