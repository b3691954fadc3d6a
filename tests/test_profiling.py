"""The per-op profiler (rmt.profile, rmt._core.profile_*): off by default, changes no numbers,
names the ops a training step runs, and its context manager restores the previous state."""
import numpy as np
import pytest

import rmt
from rmt import _core

DECODER = dict(kind="rmt", vocab_size=13, d_model=16, n_layers=2, n_heads=2, d_ff=24,
               segment_len=5, num_mem_tokens=3, dropout=0.1)
ENCODER = dict(kind="rmt_encoder", vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=24,
               segment_len=5, num_mem_tokens=3, num_classes=3, dropout=0.1)


def decoder_batch(seed=1, segments=3, batch=3):
    g = np.random.default_rng(seed)
    L = segments * DECODER["segment_len"]
    return {"tokens": g.integers(0, DECODER["vocab_size"], (batch, L)),
            "targets": g.integers(0, DECODER["vocab_size"], (batch, L))}


def encoder_batch(seed=2, segments=2, batch=3):
    g = np.random.default_rng(seed)
    L = segments * ENCODER["segment_len"]
    return {"tokens": g.integers(1, ENCODER["vocab_size"], (batch, L)),
            "labels": g.integers(0, ENCODER["num_classes"], (batch,))}


def train(cfg, batch, steps, profiled):
    """Losses, grad norms, final parameters and gradients of `steps` AdamW steps."""
    model = rmt.from_config(rmt.ModelConfig(**cfg), seed=3)
    trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-2, weight_decay=0.01), clip_norm=0.5, seed=5)
    was = _core.profile_enabled()
    _core.profile_enable(profiled)
    try:
        stats = [trainer.step(batch) for _ in range(steps)]
    finally:
        _core.profile_enable(was)
    return ([(s["loss"], s["grad_norm"]) for s in stats], model.flat_parameters.copy(),
            model.flat_grads.copy())


def names(records):
    return {r["name"] for r in records}


def test_off_by_default():
    # A fresh interpreter would say the same; here: nothing the tests did left it on.
    assert _core.profile_enabled() is False
    _core.profile_reset()
    train(DECODER, decoder_batch(), 1, profiled=False)
    assert _core.profile_report() == []


@pytest.mark.parametrize("cfg,batch", [(DECODER, decoder_batch()), (ENCODER, encoder_batch())],
                         ids=["rmt", "rmt_encoder"])
def test_profiling_changes_no_number(cfg, batch):
    off = train(cfg, batch, 2, profiled=False)
    on = train(cfg, batch, 2, profiled=True)
    assert on[0] == off[0]   # losses and grad norms, exactly
    np.testing.assert_array_equal(on[1], off[1])
    np.testing.assert_array_equal(on[2], off[2])


def test_report_names_the_main_ops_of_a_step():
    with rmt.profile() as prof:
        train(DECODER, decoder_batch(), 1, profiled=True)
    got = names(prof.records)
    for op in ["fwd.linear.qkv", "fwd.linear.o", "fwd.linear.fc1", "fwd.linear.fc2",
               "fwd.linear.head", "fwd.rel_attention", "fwd.layernorm", "fwd.dropout",
               "fwd.embedding", "fwd.cross_entropy", "bwd.linear.qkv", "bwd.linear.fc1",
               "bwd.rel_attention", "bwd.layernorm", "bwd.relu", "bwd.dropout",
               "bwd.cross_entropy", "bwd.embedding", "glue.copy", "glue.zeros",
               "optim.adamw", "optim.grad_norm", "optim.clip_norm", "optim.zero_grad"]:
        assert op in got, op
    # the ReLU is applied by the fc1 product itself (no pass of its own in the forward)
    assert "fwd.relu" not in got
    # keys and values read h itself without a cache; only Transformer-XL concatenates
    assert "glue.concat" not in got
    with rmt.profile() as txl_prof:
        train(dict(DECODER, kind="txl", num_mem_tokens=0, mem_len=4), decoder_batch(), 1,
              profiled=True)
    assert "glue.concat" in names(txl_prof.records)
    for r in prof.records:
        assert r["seconds"] > 0 and r["calls"] >= 1, r
    by = {r["name"]: r for r in prof.records}
    # one step: 3 segments x 2 layers of each layer op, one optimizer update
    assert by["fwd.linear.qkv"]["calls"] == 6 and by["bwd.rel_attention"]["calls"] == 6
    assert by["optim.adamw"]["calls"] == 1
    # per call 2 (B Qo + 2 B K) C D: q over the B x Qo query rows, k and v over the B x K key rows
    # (K = Q: rmt has no cache), C = D = 16; 6 calls. Qo = Q but in the last layer, whose
    # read-memory rows are keys and values only: Qo = Q - M there.
    M = DECODER["num_mem_tokens"]
    Q = DECODER["segment_len"] + 2 * M
    per_segment = 2 * (3 * Q + 2 * 3 * Q) * 16 * 16 + 2 * (3 * (Q - M) + 2 * 3 * Q) * 16 * 16
    assert by["fwd.linear.qkv"]["flops"] == 3 * per_segment
    assert [r["seconds"] for r in prof.records] == sorted((r["seconds"] for r in prof.records),
                                                          reverse=True)
    assert 0 < prof.total <= prof.wall
    assert 0 < prof.coverage <= 1


def test_encoder_and_adam_scopes():
    model = rmt.from_config(rmt.ModelConfig(**ENCODER))
    trainer = rmt.Trainer(model, rmt.Adam(lr=1e-3), clip_value=0.1)
    with rmt.profile() as prof:
        trainer.step(encoder_batch())
    got = names(prof.records)
    assert {"fwd.attention", "bwd.attention", "fwd.gelu", "bwd.gelu", "fwd.linear.pooler",
            "bwd.linear.pooler", "fwd.tanh", "optim.adam", "optim.clip_value"} <= got
    assert "optim.adamw" not in got and "fwd.rel_attention" not in got


def test_reset_and_accumulate():
    batch = decoder_batch()
    with rmt.profile() as first:
        train(DECODER, batch, 1, profiled=True)
    one = {r["name"]: r["calls"] for r in first.records}
    with rmt.profile(reset=False) as second:
        train(DECODER, batch, 1, profiled=True)
    two = {r["name"]: r["calls"] for r in second.records}
    assert two == {k: 2 * v for k, v in one.items()}
    _core.profile_reset()
    assert _core.profile_report() == []
    assert first.records and one == {r["name"]: r["calls"] for r in first.records}   # a snapshot


def test_context_manager_restores_state_and_table():
    assert not _core.profile_enabled()
    with pytest.raises(RuntimeError):
        with rmt.profile() as prof:
            assert _core.profile_enabled()
            train(DECODER, decoder_batch(), 1, profiled=True)
            raise RuntimeError("boom")
    assert not _core.profile_enabled()
    assert prof.records   # filled even when the block raised
    _core.profile_enable(True)
    try:
        with rmt.profile():
            pass
        assert _core.profile_enabled()   # restores the previous state, which was on
    finally:
        _core.profile_enable(False)
    table = prof.table().splitlines()
    assert table[0].split()[:3] == ["op", "ms", "%"]
    assert len(table) == len(prof.records) + 2 and table[-1].startswith("total")
    assert table[1].split()[0] == prof.records[0]["name"]
    assert "GFLOP/s" in table[0] and "optim.adamw" in prof.table()
    assert "ms/it" in prof.table(per=2)
    assert set(prof.by_group()) == {"fwd", "bwd", "glue", "optim"}
