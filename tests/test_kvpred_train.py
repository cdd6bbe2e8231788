"""KV Prediction training: losses, FLOPs accounting, the trainer (resume), checkpoints."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx

from jaxserve.sharding import make_mesh
from kvpred import flops
from kvpred.aux import build_aux
from kvpred.io import load_kvp, save_kvp
from kvpred.losses import KVPLossWeights, kv_l1, token_ce
from kvpred.model import KVPModel, trainable_filter
from kvpred.predictor import KVPredictor
from kvpred.recipes import parse_data_spec
from kvpred.train import TrainConfig, Trainer, kvp_loss_fn, read_metrics

# -- losses -------------------------------------------------------------------------------------


def test_token_ce_matches_hand_computation_and_masks_padding():
    logits = jnp.asarray([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    targets = jnp.asarray([[0, 2]])
    lse0 = np.log(np.exp(2) + 2)
    ce, z = token_ce(logits, targets, jnp.asarray([[1.0, 0.0]]), z_weight=1e-4)
    np.testing.assert_allclose(ce, lse0 - 2.0, rtol=1e-6)
    np.testing.assert_allclose(z, 1e-4 * lse0**2, rtol=1e-6)
    ce2, _ = token_ce(logits, targets, jnp.ones((1, 2)))
    np.testing.assert_allclose(ce2, ((lse0 - 2.0) + np.log(3)) / 2, rtol=1e-6)


def test_kv_l1_sum_and_mean_over_layers_and_masking():
    ones = jnp.ones((1, 3, 2, 4))
    pred = [(ones, ones), (ones * 3, ones)]
    target = [(ones * 0, ones), (ones, ones * 2)]
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    # layer 0: |1-0| + 0 = 1; layer 1: |3-1| + |1-2| = 3
    total, per = kv_l1(pred, target, mask, "sum")
    np.testing.assert_allclose(per, [1.0, 3.0])
    np.testing.assert_allclose(total, 4.0)
    np.testing.assert_allclose(kv_l1(pred, target, mask, "mean")[0], 2.0)
    # padding does not count: garbage in the masked position changes nothing
    bad = [(p.at[0, 2].set(100.0), v) for p, v in pred]
    np.testing.assert_allclose(kv_l1(bad, target, mask, "sum")[0], 4.0)
    with pytest.raises(ValueError, match="kv_loss_reduce"):
        kv_l1(pred, target, mask, "max")
    with pytest.raises(ValueError, match="kv_loss_reduce"):
        KVPLossWeights(kv_reduce="median")


# -- FLOPs --------------------------------------------------------------------------------------


def test_flops_param_formula_and_attention_count_by_hand():
    c = tiny_config(num_layers=2)  # d 48, 4 heads of 12, 2 kv heads, ffn 80, vocab 97, tied
    n = 10
    assert flops.prefill_flops(c, n, "params") == 2 * n * c.num_params()
    per_layer = 48 * 4 * 12 * 2 + 48 * 2 * 12 * 2 + 3 * 48 * 80
    pairs = n * (n + 1) // 2
    want = 2 * (2 * n * per_layer + 2 * 2 * 4 * 12 * pairs) + 2 * 48 * 97
    assert flops.prefill_flops(c, n, "attention") == want
    # a KVP prefill: A on n-1 tokens (no LM head), P, and B's last token over n keys
    a = tiny_config(num_layers=1, d_model=24, ffn_dim=40)
    p = 1234
    got = flops.kvp_prefill_flops(c, a, p, n, "params")
    assert got == 2 * (n - 1) * (a.num_params() + p) + 2 * c.num_params()
    got = flops.kvp_prefill_flops(c, a, p, n, "attention")
    a_layer = 24 * 4 * 12 * 2 + 24 * 2 * 12 * 2 + 3 * 24 * 40
    a_f = 2 * (n - 1) * a_layer + 2 * 2 * 4 * 12 * ((n - 1) * n // 2)
    b_f = 2 * (2 * per_layer + 2 * 2 * 4 * 12 * n) + 2 * 48 * 97
    assert got == a_f + 2 * (n - 1) * p + b_f
    with pytest.raises(ValueError, match="FLOPs kind"):
        flops.prefill_flops(c, n, "macs")


# -- trainer ------------------------------------------------------------------------------------


def _batch_at(step: int) -> dict:
    rng = np.random.default_rng(step)
    t = rng.integers(3, 97, (4, 13)).astype(np.int32)
    mask = np.ones((4, 12), np.float32)
    mask[1, 9:] = 0.0
    return {"inputs": t[:, :-1], "targets": t[:, 1:], "mask": mask, "input_mask": mask}


def _kvp(seed=0):
    base = random_model(tiny_config(num_layers=4), seed=seed)
    aux = build_aux("lp:0.5", base)
    pred = KVPredictor(aux.model.config, base.config, aux.layer_map, rngs=nnx.Rngs(0))
    return base, aux, KVPModel(base, aux.model, pred)


def test_trainer_resumes_on_the_same_loss_curve_and_leaves_the_base_frozen(tmp_path):
    mesh = make_mesh({"data": 2, "model": 1}, jax.devices()[:2])  # data parallel
    cfg = TrainConfig(steps=6, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=3)
    loss = kvp_loss_fn(KVPLossWeights(kv_reduce="mean"))
    base, _, kvp = _kvp()
    whole = Trainer(nnx.clone(kvp), trainable_filter(), loss, cfg, str(tmp_path / "a"), mesh)
    want = [r["loss"] for r in whole.run(_batch_at)]
    whole.close()

    def killed(step):  # the process dies while fetching step 4's batch
        if step == 4:
            raise KeyboardInterrupt
        return _batch_at(step)

    first = Trainer(nnx.clone(kvp), trainable_filter(), loss, cfg, str(tmp_path / "b"), mesh)
    with pytest.raises(KeyboardInterrupt):
        first.run(killed)
    first.close()
    again = Trainer(nnx.clone(kvp), trainable_filter(), loss, cfg, str(tmp_path / "b"), mesh)
    again.run(_batch_at)
    assert again.step == 6
    got = [r["loss"] for r in read_metrics(str(tmp_path / "b"))]
    assert [r["step"] for r in read_metrics(str(tmp_path / "b"))] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want[-1] != want[0]
    trained = again.model()
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(trained.base, nnx.Param)),
        nnx.to_flat_state(nnx.state(base, nnx.Param)),
    ):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(p))
    moved = [
        float(jnp.abs(a.get_value() - b.get_value()).max())
        for (_, a), (_, b) in zip(
            nnx.to_flat_state(nnx.state(trained.predictor, nnx.Param)),
            nnx.to_flat_state(nnx.state(kvp.predictor, nnx.Param)),
        )
    ]
    assert max(moved) > 0
    rec = read_metrics(str(tmp_path / "a"))[-1]
    assert {"ce_base", "ce_aux", "kv_l1", "lr", "grad_norm", "tokens_per_s"} <= set(rec)
    again.close()


def test_trainer_rejects_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=5, warmup_steps=10)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    _, _, kvp = _kvp()
    mesh = make_mesh({"data": 2, "model": 1}, jax.devices()[:2])
    tr = Trainer(
        kvp,
        trainable_filter(),
        kvp_loss_fn(KVPLossWeights()),
        TrainConfig(steps=2, warmup_steps=1),
        str(tmp_path),
        mesh,
    )
    with pytest.raises(ValueError, match="data axis"):
        tr.put_batch({"inputs": np.zeros((3, 4), np.int32)})
    tr.close()
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(
            kvp,
            nnx.PathContains("nope"),
            None,
            TrainConfig(steps=2, warmup_steps=1),
            str(tmp_path / "x"),
        )


# -- checkpoints --------------------------------------------------------------------------------


def test_kvp_checkpoint_round_trip_and_base_mismatch(tmp_path):
    base, aux, kvp = _kvp()
    for lin in kvp.predictor.k:
        lin.b.set_value(lin.b[...] + 0.5)
    d = save_kvp(kvp, str(tmp_path / "kvp"), base_source="test", meta={"aux_spec": "lp:0.5"})
    meta = json.load(open(os.path.join(d, "kvp_config.json")))
    assert meta["layer_map"] == [0, 0, 1, 1] and meta["aux_spec"] == "lp:0.5"
    back = load_kvp(d, base)
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(back, nnx.Param)), nnx.to_flat_state(nnx.state(kvp, nnx.Param))
    ):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(p))
    other = random_model(tiny_config(num_layers=4, d_model=64))
    with pytest.raises(ValueError, match="differs in"):
        load_kvp(d, other)
    with pytest.raises(FileNotFoundError, match="not a KV prediction checkpoint"):
        load_kvp(str(tmp_path), base)


def test_data_spec_parsing(tmp_path):
    assert parse_data_spec("synthetic_qa:0.8,stdlib_code:0.2") == {
        "synthetic_qa": 0.8,
        "stdlib_code": 0.2,
    }
    f = tmp_path / "t.txt"
    f.write_text("hello")
    assert parse_data_spec(f"{f}") == {str(f): 1.0}
    with pytest.raises(ValueError, match="neither built in"):
        parse_data_spec("wikipedia:1")
    with pytest.raises(ValueError, match="weight must be > 0"):
        parse_data_spec("synthetic_qa:0")


@pytest.mark.parametrize("steps,warmup", [(1, 0), (1, 1), (2, 2), (100, 10)])
def test_lr_schedule_warms_up_then_decays_for_any_length(steps, warmup):
    from kvpred.train import lr_schedule

    sched = lr_schedule(TrainConfig(steps=steps, warmup_steps=warmup, lr=1e-3))
    lrs = [float(sched(i)) for i in range(steps + 1)]
    assert all(0.0 <= x <= 1e-3 * (1 + 1e-6) for x in lrs)  # float32 schedule values
    w = max(warmup, 1)
    if steps > w:
        assert lrs[w] == pytest.approx(1e-3) and lrs[steps] < lrs[w]


def test_c_predictor_least_squares_init_starts_closer_than_random(tmp_path, monkeypatch):
    from jaxserve.models.checkpoint import save_checkpoint
    from kvpred.io import read_kvp_config
    from kvpred.recipes import train_kvpred

    base = random_model(tiny_config(num_layers=2))
    aux_dir = str(tmp_path / "aux")
    save_checkpoint(random_model(tiny_config(d_model=32, num_kv_heads=1, num_layers=1), 7), aux_dir)
    cfg = TrainConfig(steps=1, warmup_steps=0, log_every=1)
    first = {}
    for init in ("identity", "auto"):
        work = str(tmp_path / init)
        _, history = train_kvpred(
            base,
            "test-base",
            f"c:{aux_dir}",
            _batch_at,
            cfg,
            work,
            predictor_init=init,
            init_batches=2,
        )
        first[init] = history[0]["kv_l1"]  # step 1's loss is the initial predictor's
        meta = read_kvp_config(os.path.join(work, "final"))
        assert meta["predictor_init"] == ("identity" if init == "identity" else "lstsq")
    assert first["auto"] < 0.9 * first["identity"]
    # resuming restores the trained predictor: no second fit (it would be overwritten)
    import kvpred.recipes

    fits, fit = [], kvpred.recipes.fit_least_squares
    monkeypatch.setattr(
        kvpred.recipes, "fit_least_squares", lambda *a, **k: fits.append(1) or fit(*a, **k)
    )
    more = TrainConfig(steps=2, warmup_steps=0, log_every=1)
    _, history = train_kvpred(
        base, "test-base", f"c:{aux_dir}", _batch_at, more, str(tmp_path / "auto"), init_batches=2
    )
    assert [h["step"] for h in history] == [2] and fits == []
    train_kvpred(
        base, "test-base", f"c:{aux_dir}", _batch_at, more, str(tmp_path / "new"), init_batches=2
    )
    assert fits == [1]  # a fresh workdir does fit
    with pytest.raises(ValueError, match="predictor_init"):
        train_kvpred(
            base, "b", f"c:{aux_dir}", _batch_at, cfg, str(tmp_path / "x"), predictor_init="zeros"
        )


def test_random_predicted_prefix_cuts_are_per_row_reproducible_and_reach_the_loss(tmp_path):
    from kvpred.io import read_kvp_config
    from kvpred.recipes import _with_random_cuts, train_kvpred

    cut_at = _with_random_cuts(_batch_at, seed=0)
    a, again, other = cut_at(3), cut_at(3), cut_at(4)
    t = a["inputs"].shape[1]
    np.testing.assert_array_equal(a["predicted_until"], again["predicted_until"])
    assert not np.array_equal(a["predicted_until"], other["predicted_until"])
    cuts = np.concatenate([cut_at(s)["predicted_until"] for s in range(50)])
    assert cuts.min() >= 1 and cuts.max() <= t and len(set(cuts.tolist())) > t // 2
    mixed = np.concatenate(
        [_with_random_cuts(_batch_at, 0, 0.5)(s)["predicted_until"] for s in range(50)]
    )  # about half the rows whole (a uniform cut is T for 1 in T of the others)
    assert 0.4 < np.mean(mixed == t) < 0.65 and len(set(mixed.tolist())) > t // 2

    base = random_model(tiny_config(num_layers=2))
    cfg = TrainConfig(steps=1, warmup_steps=0, log_every=1)
    ce = {}
    for prefix in ("all", "random"):
        work = str(tmp_path / prefix)
        _, history = train_kvpred(
            base, "test-base", "lp:0.5", _batch_at, cfg, work, predicted_prefix=prefix
        )
        ce[prefix] = history[0]["ce_base"]
        assert read_kvp_config(os.path.join(work, "final"))["predicted_prefix"] == prefix
    assert abs(ce["all"] - ce["random"]) > 1e-4  # the base read its own cache after the cuts
    with pytest.raises(ValueError, match="predicted_prefix"):
        train_kvpred(base, "b", "lp:0.5", _batch_at, cfg, str(tmp_path / "x"), predicted_prefix="x")
