"""The RMT encoder (kind rmt_encoder) against the PyTorch reference (tests/torch_reference.py) on
the same weights: loss, logits and every parameter gradient over right-aligned unrolls with empty
and partially padded segments and every bptt_depth; then streaming, padding and depth properties
and bad input."""
import numpy as np
import pytest
import torch

from rmt.config import ModelConfig
from rmt import _core
import torch_reference as ref

CFG = dict(kind="rmt_encoder", vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=24,
           segment_len=5, num_mem_tokens=3, num_classes=3, dropout=0.0)
T = CFG["segment_len"]


def make_pair(cfg=CFG, seed=0):
    """Our model and float64 torch copies of its (random, large) weights."""
    model = _core.Model(cfg, seed)
    model.training = False
    params = ref.random_params(cfg, seed=seed)
    ours = model.parameters()
    assert list(ours) == list(params), "parameter names or order differ from docs/MODELS.md"
    for name, t in params.items():
        assert ours[name].shape == tuple(t.shape), name
        ours[name][...] = t.detach().numpy().astype(np.float32)
        with torch.no_grad():
            t.copy_(torch.from_numpy(ours[name].astype(np.float64)))
    return model, params


def right_aligned_batch(segments=4, seed=1, pad=0, low=1):
    """Four samples of different fill, right-aligned on `segments` segments of T = 5:
    0: full; 1: one leading empty segment, its first non-empty segment padded at the front;
    2: two leading empty segments and a pad in the middle of its first segment; 3: a single
    (last) segment, partially padded."""
    gen = np.random.default_rng(seed)
    L = segments * T
    tokens = gen.integers(low, CFG["vocab_size"], (4, L)).astype(np.int64)
    tokens[tokens == pad] = 3
    tokens[1, :T + 2] = pad
    tokens[2, :2 * T] = pad
    tokens[2, 2 * T + 2] = pad
    tokens[3, :L - 3] = pad
    labels = np.array([0, 2, 1, 2], np.int64)
    return tokens, labels


def reference(params, tokens, labels, bptt_depth, cfg=CFG):
    loss, logits = ref.encoder_forward_loss(cfg, params, torch.tensor(tokens),
                                            torch.tensor(labels), bptt_depth)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.item(), logits.detach().numpy(), grads


def assert_grads_match(model, params, grads):
    ours = model.grads()
    for (name, p), g in zip(params.items(), grads):
        expected = np.zeros(p.shape) if g is None else g.numpy()
        scale = max(np.abs(expected).max(), 1e-3)
        np.testing.assert_allclose(ours[name], expected, rtol=2e-3, atol=3e-4 * scale,
                                   err_msg=f"gradient of {name}")


@pytest.mark.parametrize("bptt_depth", [0, 1, 2, None])
def test_loss_logits_and_every_gradient_match_reference(bptt_depth):
    model, params = make_pair()
    tokens, labels = right_aligned_batch()
    model.zero_grad()
    loss, logits = model.classify_loss_and_grad(tokens, labels, bptt_depth=bptt_depth,
                                                return_logits=True)
    ref_loss, ref_logits, grads = reference(params, tokens, labels, bptt_depth)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, err_msg="loss")
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=1e-4, err_msg="logits")
    assert_grads_match(model, params, grads)
    np.testing.assert_array_equal(model.classify(tokens), logits)


def test_one_head_narrow_heads_one_layer_and_other_special_ids_match_reference():
    cfg = dict(CFG, n_heads=4, d_head=3, n_layers=1, num_mem_tokens=1, num_classes=2,
               cls_id=7, sep_id=8, pad_id=9)
    model, params = make_pair(cfg, seed=3)
    tokens, labels = right_aligned_batch(segments=3, pad=9, low=0)
    labels = labels % 2
    model.zero_grad()
    loss, logits = model.classify_loss_and_grad(tokens, labels, bptt_depth=1, return_logits=True)
    ref_loss, ref_logits, grads = reference(params, tokens, labels, 1, cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=1e-4)
    assert_grads_match(model, params, grads)


def test_depth_truncation_matters_so_the_reference_comparison_can_fail():
    # Guard against a vacuous test: the three depths give clearly different gradients.
    model, params = make_pair()
    tokens, labels = right_aligned_batch()
    name = "layers.0.ff.fc1.weight"
    got = []
    for depth in [0, 1, None]:
        model.zero_grad()
        model.classify_loss_and_grad(tokens, labels, bptt_depth=depth)
        got.append(model.grads()[name].copy())
    for a, b in [(0, 1), (1, 2)]:
        assert np.abs(got[a] - got[b]).max() > 1e-3 * np.abs(got[b]).max()


def test_streaming_steps_give_the_final_logits_of_classify():
    model, _ = make_pair()
    tokens, _ = right_aligned_batch()
    state = model.init_stream(4)
    S = tokens.shape[1] // T
    for s in range(S):
        logits = model.step(state, tokens[:, s * T:(s + 1) * T])
        assert logits.shape == (4, CFG["num_classes"])
        for b in range(4):
            empty = bool((tokens[b, s * T:(s + 1) * T] == 0).all())
            assert np.isnan(logits[b]).all() == empty
        if s == 0:   # samples 1-3 skipped segment 0: their memory is still mem_tokens
            mem = state.memory
            for b in (1, 2, 3):
                np.testing.assert_array_equal(mem[b], model.parameters()["mem_tokens"])
            assert not np.allclose(mem[0], model.parameters()["mem_tokens"])
    assert state.segments_seen == S
    np.testing.assert_allclose(logits, model.classify(tokens), rtol=1e-6, atol=1e-6)


def test_empty_segments_are_skipped_exactly():
    # A sample with leading empty segments gives the logits and gradients of the same sample
    # without them, at every depth (empty segments do not use up bptt_depth).
    model, _ = make_pair()
    tokens, labels = right_aligned_batch()
    short = tokens[2:3, 2 * T:]
    for depth in [0, 1, None]:
        model.zero_grad()
        loss_a, logits_a = model.classify_loss_and_grad(tokens[2:3], labels[2:3], bptt_depth=depth,
                                                        return_logits=True)
        grads_a = model.flat_grads.copy()
        model.zero_grad()
        loss_b, logits_b = model.classify_loss_and_grad(short, labels[2:3], bptt_depth=depth,
                                                        return_logits=True)
        np.testing.assert_allclose(logits_a, logits_b, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
        np.testing.assert_allclose(grads_a, model.flat_grads, rtol=1e-5, atol=1e-7)
    # and a sample's output does not depend on the rest of the batch
    np.testing.assert_allclose(model.classify(tokens)[2], model.classify(tokens[2:3])[0],
                               rtol=1e-5, atol=1e-6)


def test_padding_never_changes_the_output_and_gets_no_gradient():
    model, _ = make_pair()
    tokens, labels = right_aligned_batch()
    model.zero_grad()
    _, base = model.classify_loss_and_grad(tokens, labels, return_logits=True)
    assert np.abs(model.grads()["word_emb.weight"][0]).max() == 0.0, "pad embedding got gradient"
    assert np.abs(model.grads()["word_emb.weight"][5]).max() > 0.0
    model.parameters()["word_emb.weight"][0] += 3.0
    np.testing.assert_array_equal(model.classify(tokens), base)
    # whereas a real token's value does matter
    changed = tokens.copy()
    changed[3, -1] = 4 if changed[3, -1] != 4 else 5
    assert not np.allclose(model.classify(changed)[3], base[3])


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_initial_memory_gets_gradient_only_within_bptt_depth(depth):
    # A sample with n non-empty segments (right-aligned in S = 3): mem_tokens gets gradient iff
    # its first segment is within the depth of the loss, n - 1 < depth.
    model, _ = make_pair()
    gen = np.random.default_rng(7)
    for n in [1, 2, 3]:
        tokens = gen.integers(1, CFG["vocab_size"], (1, 3 * T)).astype(np.int64)
        tokens[0, :(3 - n) * T] = 0
        model.zero_grad()
        model.classify_loss_and_grad(tokens, np.array([1]), bptt_depth=depth)
        g = np.abs(model.grads()["mem_tokens"]).max()
        if n - 1 < depth:
            assert g > 1e-6, f"n={n}: the loss must reach mem_tokens at depth {depth}"
        else:
            assert g == 0.0, f"n={n}: gradient leaked past depth {depth}"
        assert np.abs(model.grads()["pos_emb.weight"]).max() > 0


def test_dropout_same_seed_same_result_and_different_seed_differs():
    cfg = dict(CFG, dropout=0.2)
    tokens, labels = right_aligned_batch()
    results = []
    for seed in [7, 7, 8]:
        model = _core.Model(cfg, 0)
        model.training = True
        model.set_dropout_seed(seed)
        loss, _ = model.classify_loss_and_grad(tokens, labels)
        results.append((loss, model.flat_grads.copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][0] != results[2][0]


def test_initialisation_follows_the_documented_rules():
    model = _core.Model(dict(CFG, d_model=64, init_std=0.05, mem_init="repeat"), 0)
    p = model.parameters()
    assert abs(p["pos_emb.weight"].std() - 0.05) < 0.01
    assert abs(p["emb_norm.weight"].mean() - 1.0) < 0.03
    assert np.all(p["emb_norm.bias"] == 0) and np.all(p["cls_head.bias"] == 0)
    assert np.all(p["pooler.bias"] == 0)
    assert abs(p["cls_head.weight"].std() - 0.05) < 0.02
    m = p["mem_tokens"]                      # mem_init = "repeat"
    np.testing.assert_array_equal(m[0], m[2])


def test_python_config_carries_the_new_fields_and_decoders_keep_working():
    c = ModelConfig(**{k: v for k, v in CFG.items()})
    assert ModelConfig.from_json(c.to_json()) == c
    d = ModelConfig(vocab_size=1, d_model=8, n_layers=1, n_heads=1, d_ff=8, segment_len=2,
                        kind="transformer")
    assert d.num_classes == 0 and d.pad_id == 0


# ---- bad input ----

@pytest.mark.parametrize("field,value,match", [
    ("num_classes", 1, "num_classes"), ("cls_id", 11, "cls_id"), ("sep_id", -1, "sep_id"),
    ("pad_id", 20, "pad_id"), ("mem_len", 2, "mem_len"), ("num_mem_tokens", 0, "num_mem_tokens")])
def test_bad_config_is_rejected(field, value, match):
    with pytest.raises(ValueError, match=match):
        _core.Model(dict(CFG, **{field: value}), 0)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**dict(CFG, **{field: value}))


def test_bad_inputs_raise_clear_errors():
    model, _ = make_pair()
    tokens, labels = right_aligned_batch()
    with pytest.raises(IndexError, match="labels"):
        model.classify_loss_and_grad(tokens, np.array([0, 1, 3, 0]))
    with pytest.raises(IndexError, match="labels"):
        model.classify_loss_and_grad(tokens, np.array([0, -1, 2, 0]))
    with pytest.raises(ValueError, match="labels"):
        model.classify_loss_and_grad(tokens, labels[:3])
    with pytest.raises(TypeError, match="labels"):
        model.classify_loss_and_grad(tokens, labels.astype(np.float32))
    with pytest.raises(IndexError, match="tokens"):
        bad = tokens.copy()
        bad[0, 0] = 11
        model.classify(bad)
    with pytest.raises(ValueError, match="segment_len"):
        model.classify(tokens[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        model.classify(tokens[0])
    with pytest.raises(ValueError, match="last segment"):
        bad = tokens.copy()
        bad[1, -T:] = 0
        model.classify(bad)
    with pytest.raises(ValueError, match="bptt_depth"):
        model.classify_loss_and_grad(tokens, labels, bptt_depth=-1)
    with pytest.raises(ValueError, match="classify"):
        model.loss_and_grad(tokens, tokens)
    state = model.init_stream(4)
    with pytest.raises(ValueError, match="segment_len"):
        model.step(state, tokens[:, :T + 1])
    assert np.abs(model.flat_grads).max() == 0.0, "a rejected call touched the gradients"


def test_classify_on_a_decoder_is_rejected():
    decoder = _core.Model(dict(CFG, kind="rmt"), 0)
    tokens, labels = right_aligned_batch()
    with pytest.raises(ValueError, match="rmt_encoder"):
        decoder.classify(tokens)
    with pytest.raises(ValueError, match="rmt_encoder"):
        decoder.classify_loss_and_grad(tokens, labels)


def test_a_training_call_leaves_nothing_behind_for_the_next():
    # As the decoders (tests/test_models.py): reused activation buffers change nothing.
    cfg = dict(CFG, dropout=0.2)
    tokens, labels = right_aligned_batch()

    def run(model):
        model.training = True
        model.set_dropout_seed(3)
        model.zero_grad()
        loss, _ = model.classify_loss_and_grad(tokens, labels, bptt_depth=None)
        return loss, model.flat_grads.copy()

    want_loss, want_grads = run(_core.Model(cfg, 0))
    used = _core.Model(cfg, 0)
    used.training = True
    for segments, seed in [(6, 2), (3, 3), (5, 4)]:
        t, y = right_aligned_batch(segments=segments, seed=seed)
        used.classify_loss_and_grad(t[:3], y[:3])
    loss, grads = run(used)
    assert loss == want_loss
    np.testing.assert_array_equal(grads, want_grads)


def test_streaming_with_threads_splits_the_batch_and_gives_the_same_bits():
    # With threads, each thread streams a share of the batch through the segment; every output
    # (logits, the carried memory, the attention maps gathered from the shares) must be the
    # bits of one thread: with an all-padding sample, a partly padded one, a sample with content
    # early and none in the last segment (alone in its share at 5 threads), more threads than
    # samples (no split) and one sample alone.
    import rmt
    cfg = dict(CFG, vocab_size=50, d_model=32, segment_len=7, d_ff=48)
    model = _core.Model(cfg, 0)
    model.training = False
    gen = np.random.default_rng(0)
    tokens = gen.integers(1, 50, (5, 28))
    tokens[1, :9] = 0
    tokens[3] = 0
    tokens[4, 10:12] = 0
    tokens[2, 21:] = 0

    def run(threads, batch):
        rmt.set_num_threads(threads)
        try:
            state = model.init_stream(len(batch))
            out, calls = [], 0
            for s in range(4):
                with rmt.profile() as prof:   # (the steps only: attention(1) recomputes the
                    # last layer on all rows, another fwd.attention)
                    out.append(model.step(state, batch[:, s * 7:(s + 1) * 7]))
                calls += {r["name"]: r["calls"] for r in prof.records}["fwd.attention"]
                out.append(model.attention(state, 1))
            # a build without OpenMP runs one thread whatever is set
            return out + [state.memory.copy()], calls if rmt.get_num_threads() == threads else None
        finally:
            rmt.set_num_threads(2)

    for batch in (tokens, tokens[:1]):
        one, calls_one = run(1, batch)
        assert calls_one == 4 * CFG["n_layers"]   # one share a segment
        for threads in (2, 3, 5, 8):
            got, calls = run(threads, batch)
            for a, b in zip(one, got):
                np.testing.assert_array_equal(a, b)
            if len(batch) >= threads and calls is not None:
                # the split happened: every share with content ran its layers (per segment, the
                # shares whose samples all were padding there did not)
                assert calls > calls_one
    maps = run(3, tokens)[0][-2]   # the last segment's maps: the 3 samples with content there
    assert maps.shape == (3, CFG["n_heads"], 7 + CFG["num_mem_tokens"] + 3,
                          7 + CFG["num_mem_tokens"] + 3)
    assert np.allclose(maps.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_attention_maps_of_a_stream_match_the_reference(n_layers):
    # The last layer computes only the CLS and memory rows; state.attention recomputes it on all
    # rows. Every layer's maps, the last one's included, against the reference's.
    cfg = dict(CFG, n_layers=n_layers)
    model, params = make_pair(cfg)
    S, B = 3, 3
    tokens = np.random.default_rng(5).integers(1, cfg["vocab_size"], (B, S * T))
    tokens[1, T + 2:T + 4] = 0   # padded keys (pad_id 0) in one sample's second segment
    ref.PROBS_RECORDER = recorded = []
    try:
        ref.encoder_forward_loss(cfg, params, torch.tensor(tokens))
    finally:
        ref.PROBS_RECORDER = None
    assert len(recorded) == B * S * n_layers   # sample by sample, segment by segment
    state = model.init_stream(B)
    for s in range(S):
        model.step(state, tokens[:, s * T:(s + 1) * T])
        for layer in range(n_layers):
            ours = model.attention(state, layer)
            want = np.stack([recorded[(b * S + s) * n_layers + layer].numpy() for b in range(B)])
            assert ours.shape == want.shape
            np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"segment {s} layer {layer}")
