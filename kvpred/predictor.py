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
