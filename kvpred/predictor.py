"""The KV predictor: per base layer, one Linear (with bias) for K and one for V.

Base layer i reads auxiliary layer j = layer_map[i] and maps its cache per token on merged
heads, [T, Ka_j * Da] -> [T, Kb_i * Db]. Keys are predicted *before* RoPE and before the base's
k-norm (the auxiliary model's raw projections go in, the base's raw projections are the target),
so the base applies its own k-norm and RoPE at absolute positions.

Where input and output widths are equal the weights start as the identity and the biases at
zero: an LP auxiliary model's kept layers then predict themselves exactly at step 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig


class _Linear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, dtype, *, rngs: nnx.Rngs):
        if d_in == d_out:
            w = jnp.eye(d_in, dtype=dtype)
        else:
            w = nnx.initializers.lecun_normal()(rngs.params(), (d_in, d_out), dtype)
        self.w = nnx.Param(w, axes=("kv_in", "kv_out"))
        self.b = nnx.Param(jnp.zeros((d_out,), dtype), axes=("kv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w[...].astype(x.dtype) + self.b[...].astype(x.dtype)


class KVPredictor(nnx.Module):
    def __init__(
        self,
        aux: ModelConfig,
        base: ModelConfig,
        layer_map: list[int],
        *,
        rngs: nnx.Rngs,
        dtype: str = "float32",
    ):
        if len(layer_map) != base.num_layers:
            raise ValueError(f"layer map has {len(layer_map)} entries for {base.num_layers} layers")
        self.layer_map = tuple(int(j) for j in layer_map)
        self.out_heads = tuple(base.num_kv_heads)
        self.head_dim = base.head_dim
        dt = jnp.dtype(dtype)
        k, v = [], []
        for i, j in enumerate(self.layer_map):
            d_in = aux.num_kv_heads[j] * aux.head_dim
            d_out = base.num_kv_heads[i] * base.head_dim
            k.append(_Linear(d_in, d_out, dt, rngs=rngs))
            v.append(_Linear(d_in, d_out, dt, rngs=rngs))
        self.k = nnx.List(k)
        self.v = nnx.List(v)

    def __call__(
        self, aux_kv: list[tuple[jax.Array, jax.Array]]
    ) -> list[tuple[jax.Array, jax.Array]]:
        """aux_kv: per auxiliary layer (k_raw, v), [B, T, Ka, Da]. Returns per base layer
        (k_raw, v) predictions, [B, T, Kb, Db]."""
        out = []
        for i, j in enumerate(self.layer_map):
            ka, va = aux_kv[j]
            b, t = ka.shape[:2]
            shape = (b, t, self.out_heads[i], self.head_dim)
            k = self.k[i](ka.reshape(b, t, -1)).reshape(shape)
            v = self.v[i](va.reshape(b, t, -1)).reshape(shape)
            out.append((k, v))
        return out

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param)))


def fit_least_squares(model, batches, ridge: float = 1e-3) -> dict[str, float]:
    """Set the predictor of `model` (a KVPModel) to the ridge least-squares fit from the
    auxiliary model's cache to the base's, per base layer and for K and V, over the real tokens
    of `batches` (dicts with `inputs` [B, T] and `input_mask` [B, T]).

    A randomly initialised C predictor starts by feeding the base noise, and gradient descent
    spends most of a short run undoing it; the closed form gives the best linear map from the
    start. Returns the fit's per-layer mean absolute error on the same tokens ("kv_l1_i"), in
    the units of `kvpred.losses.kv_l1`.
    """
    pred = model.predictor
    graphdef, state = nnx.split((model.aux, model.base))

    @jax.jit
    def features(state, tokens):  # weights as arguments, not constants folded into the program
        aux, base = nnx.merge(graphdef, state)
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        first = jnp.zeros((b,), jnp.int32)  # logits are not needed: one row's
        _, aux_kv = aux(tokens, positions, logits_index=first, return_kv=True)
        _, target = base(tokens, positions, logits_index=first, return_kv=True)
        return aux_kv, target

    def rows(a, m):  # [B, T, K, D] -> the real tokens' rows, [N, K * D] in float64
        return np.asarray(a, np.float64).reshape(m.size, -1)[m]

    def with_bias(x):
        return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)

    data = []  # (aux_kv, target, mask) per batch, on the host
    for batch in batches:
        aux_kv, target = jax.device_get(features(state, jnp.asarray(batch["inputs"])))
        data.append((aux_kv, target, np.asarray(batch["input_mask"]).reshape(-1) > 0))
    if not data:
        raise ValueError("fit_least_squares needs at least one batch")
    errors = {}
    for i, j in enumerate(pred.layer_map):
        err = 0.0
        for s, lin in ((0, pred.k[i]), (1, pred.v[i])):  # K, V
            pairs = [(with_bias(rows(a[j][s], m)), rows(t[i][s], m)) for a, t, m in data]
            xx = sum(x.T @ x for x, _ in pairs)
            xy = sum(x.T @ y for x, y in pairs)
            reg = ridge * np.trace(xx) / xx.shape[0] * np.eye(xx.shape[0])
            reg[-1, -1] = 0.0  # the bias is not penalised
            sol = np.linalg.solve(xx + reg, xy)
            lin.w[...] = jnp.asarray(sol[:-1], lin.w[...].dtype)
            lin.b[...] = jnp.asarray(sol[-1], lin.b[...].dtype)
            err += sum(np.abs(x @ sol - y).sum() for x, y in pairs) / sum(y.size for _, y in pairs)
        errors[f"kv_l1_{i}"] = float(err)
    return errors
