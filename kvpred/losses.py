"""Losses: next-token cross-entropy with z-loss, and KV Prediction's combined loss.

    KVP loss = lB * (CE_B + z_B) + lA * (CE_A + z_A) + lC * R_l [L1(K^_l, K_l) + L1(V^_l, V_l)]

CE_B is the base's cross-entropy when its queries attend to the predicted cache, CE_A the
auxiliary model's own; z = z_weight * logsumexp(logits)^2 (1e-4 in the paper); L1 is the mean
absolute error over real (unpadded) tokens and all heads of a layer, on keys before RoPE and
k-norm; R is a sum over layers (the reference code) or a mean (what the paper's text reports
working better): `kv_reduce`. Every term is pad-masked.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KV_REDUCE = ("sum", "mean")


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def token_ce(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, z_weight: float = 1e-4
) -> tuple[jax.Array, jax.Array]:
    """Masked mean cross-entropy and z-loss over [B, T] tokens."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return _masked_mean(lse - picked, mask), z_weight * _masked_mean(lse * lse, mask)


def kv_l1(
    pred: list[tuple[jax.Array, jax.Array]],
    target: list[tuple[jax.Array, jax.Array]],
    mask: jax.Array,
    reduce: str = "sum",
) -> tuple[jax.Array, jax.Array]:
    """Per layer mean |K^ - K| + mean |V^ - V| over real tokens, reduced over layers.

    Returns (reduced loss, per-layer losses [L])."""
    if reduce not in KV_REDUCE:
        raise ValueError(f"kv_loss_reduce must be one of {KV_REDUCE}, not {reduce!r}")
    per_layer = []
    for (pk, pv), (tk, tv) in zip(pred, target):
        m = mask[:, :, None, None]
        denom = jnp.maximum(jnp.sum(mask.astype(jnp.float32)) * pk.shape[2] * pk.shape[3], 1.0)
        lk = jnp.sum(jnp.abs(pk - tk).astype(jnp.float32) * m) / denom
        lv = jnp.sum(jnp.abs(pv - tv).astype(jnp.float32) * m) / denom
        per_layer.append(lk + lv)
    per_layer = jnp.stack(per_layer)
    return (jnp.sum(per_layer) if reduce == "sum" else jnp.mean(per_layer)), per_layer


@dataclasses.dataclass(frozen=True)
class KVPLossWeights:
    base: float = 1.0  # lB
    aux: float = 1.0  # lA
    kv: float = 1.0  # lC
    kv_reduce: str = "sum"
    z_weight: float = 1e-4

    def __post_init__(self):
        if self.kv_reduce not in KV_REDUCE:
            raise ValueError(f"kv_loss_reduce must be one of {KV_REDUCE}, not {self.kv_reduce!r}")
        for flag, w in (("loss_base", self.base), ("loss_aux", self.aux), ("loss_kv", self.kv)):
            if not 0 <= w < float("inf"):
                raise ValueError(f"--{flag} must be a finite weight >= 0, not {w}")


def kvp_loss(out: dict, batch: dict, w: KVPLossWeights) -> tuple[jax.Array, dict]:
    """`out` from `KVPModel.train_forward`; batch: targets, mask [B, T] (target positions)
    and input_mask [B, T] (real input tokens, for the cache terms)."""
    mask, targets = batch["mask"], batch["targets"]
    ce_b, z_b = token_ce(out["logits_b"], targets, mask, w.z_weight)
    ce_a, z_a = token_ce(out["logits_a"], targets, mask, w.z_weight)
    l1, per_layer = kv_l1(out["pred_kv"], out["target_kv"], batch["input_mask"], w.kv_reduce)
    loss = w.base * (ce_b + z_b) + w.aux * (ce_a + z_a) + w.kv * l1
    metrics = {"loss": loss, "ce_base": ce_b, "ce_aux": ce_a, "kv_l1": l1}
    for i in range(per_layer.shape[0]):
        metrics[f"kv_l1_{i}"] = per_layer[i]
    return loss, metrics


def lm_loss(logits: jax.Array, batch: dict, z_weight: float = 1e-4) -> tuple[jax.Array, dict]:
    ce, z = token_ce(logits, batch["targets"], batch["mask"], z_weight)
    return ce + z, {"loss": ce + z, "ce": ce}
