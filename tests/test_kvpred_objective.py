"""What training optimises: the combined KV Prediction loss worked by hand, and the
optimiser's settings (clipping, AdamW moments, weight-decay mask, warm-up then cosine)
against a plain numpy AdamW written from the paper's description."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kvpred.losses import KVPLossWeights, kvp_loss
from kvpred.train import TrainConfig, lr_schedule, make_optimizer


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_combined_kvp_loss_matches_a_hand_worked_value(reduce):
    # two target positions, vocabulary of 3, targets [0, 2]
    out = {
        "logits_b": jnp.asarray([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]),
        "logits_a": jnp.asarray([[[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]]),
    }
    ones = jnp.ones((1, 3, 2, 4))  # [batch, tokens, kv heads, head dim]
    out["pred_kv"] = [(ones, ones), (ones * 3, ones)]
    out["target_kv"] = [(ones * 0, ones), (ones, ones * 2)]
    batch = {
        "targets": jnp.asarray([[0, 2]]),
        "mask": jnp.ones((1, 2)),
        "input_mask": jnp.asarray([[1.0, 1.0, 0.0]]),
    }
    w = KVPLossWeights(base=0.5, aux=2.0, kv=0.25, kv_reduce=reduce, z_weight=0.1)
    loss, metrics = kvp_loss(out, batch, w)

    # B: token 0 logsumexp ln(e^2 + 2), picks 2; token 1 logsumexp ln 3, picks 0
    lse_b = [math.log(math.e**2 + 2), math.log(3)]
    ce_b = ((lse_b[0] - 2.0) + lse_b[1]) / 2
    z_b = 0.1 * (lse_b[0] ** 2 + lse_b[1] ** 2) / 2
    # A: token 0 logsumexp ln(2 + e), picks 0; token 1 logsumexp 1 + ln 3, picks 1
    lse_a = [math.log(2 + math.e), 1 + math.log(3)]
    ce_a = (lse_a[0] + (lse_a[1] - 1.0)) / 2
    z_a = 0.1 * (lse_a[0] ** 2 + lse_a[1] ** 2) / 2
    # cache: layer 0 |1 - 0| + |1 - 1| = 1, layer 1 |3 - 1| + |1 - 2| = 3 (padding ignored)
    kv = {"sum": 1.0 + 3.0, "mean": (1.0 + 3.0) / 2}[reduce]
    want = 0.5 * (ce_b + z_b) + 2.0 * (ce_a + z_a) + 0.25 * kv
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ce_base"]), ce_b, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ce_aux"]), ce_a, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["kv_l1"]), kv, rtol=1e-6)


def _reference_adamw(c: TrainConfig, params: dict, grads_seq: list[dict]) -> dict:
    """AdamW as described: clip the global norm to clip_norm, bias-corrected moments, decay
    matrices only (ndim >= 2), step t at learning rate lr(t - 1)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        norm = math.sqrt(sum(float((x**2).sum()) for x in g.values()))
        if norm > c.clip_norm:
            g = {k: x * c.clip_norm / norm for k, x in g.items()}
        lr = _lr(c, t - 1)
        for k in p:
            m[k] = c.b1 * m[k] + (1 - c.b1) * g[k]
            v[k] = c.b2 * v[k] + (1 - c.b2) * g[k] ** 2
            mhat, vhat = m[k] / (1 - c.b1**t), v[k] / (1 - c.b2**t)
            update = mhat / (np.sqrt(vhat) + 1e-8)
            if p[k].ndim >= 2:
                update = update + c.weight_decay * p[k]
            p[k] = p[k] - lr * update
    return p


def _lr(c: TrainConfig, step: int) -> float:
    """Linear warm-up from 0 to lr over warmup_steps, then cosine to lr * min_lr_ratio at
    `steps`."""
    w = max(c.warmup_steps, 1)
    if step < w:
        return c.lr * step / w
    end = c.lr * c.min_lr_ratio
    frac = min(1.0, (step - w) / (c.steps - w))
    return end + (c.lr - end) * 0.5 * (1 + math.cos(math.pi * frac))


def test_optimizer_clips_decays_matrices_only_and_follows_the_schedule():
    c = TrainConfig(steps=8, lr=0.05, warmup_steps=2)
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(3, 4)),
        "norm_scale": 1 + rng.normal(size=4) * 0.1,
        "bias": rng.normal(size=4),
    }
    # gradients of very different sizes: the large ones are clipped, the small ones not
    grads_seq = [
        {k: rng.normal(size=np.shape(x)) * s for k, x in params.items()}
        for s in (10.0, 0.05, 3.0, 0.2, 0.01)
    ]
    tx = make_optimizer(c)
    p = {k: jnp.asarray(x, jnp.float32) for k, x in params.items()}
    state = tx.init(p)
    for g in grads_seq:
        updates, state = tx.update({k: jnp.asarray(x, jnp.float32) for k, x in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
    want = _reference_adamw(c, params, grads_seq)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_zero_gradients_move_only_the_decayed_matrices():
    c = TrainConfig(steps=4, lr=0.5, warmup_steps=1, weight_decay=0.1)
    p = {"w": jnp.ones((2, 2)), "scale": jnp.ones(2), "bias": jnp.ones(2)}
    tx = make_optimizer(c)
    state = tx.init(p)
    zeros = jax.tree.map(jnp.zeros_like, p)
    for _ in range(2):  # step 1 at lr(0) = 0, step 2 at lr(1) = peak
        updates, state = tx.update(zeros, state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(np.asarray(p["w"]), 1 - 0.5 * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p["scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(p["bias"]), 1.0)


def test_schedule_warms_up_linearly_then_cosine_decays_to_the_final_ratio():
    c = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    sched = lr_schedule(c)
    lrs = np.asarray([float(sched(s)) for s in range(101)])
    np.testing.assert_allclose(lrs, [_lr(c, s) for s in range(101)], rtol=1e-5, atol=1e-12)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx(0.55e-3)
    assert lrs[100] == pytest.approx(1e-4)  # lr * min_lr_ratio
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) < 0)
