"""One Flax NNX decoder for the Llama / Qwen2 / OpenELM families.

    tokens [B, T] -> embed -> L x (RMSNorm -> attention -> + -> RMSNorm -> gated MLP -> +)
                  -> RMSNorm -> logits [B, T, V]   (or [B, V] at `logits_index`)

Attention runs over the tokens given (no `kv`: causal attention; training and scoring) or
over a cache (`kv`, `block_tables`, `seq_lens`): each layer hands its new tokens' q, k, v to
one cached-attention callable, by default `PagedAttention` (`attention.py`), which writes
them into the KV pages and attends over what each sequence has cached (`prefix=True`) or, for
a prefill that starts at position 0, over the new tokens only (`prefix=False`, cheaper). A
runner may pass another callable with the same contract (a Pallas kernel, or a CPU decode
strategy with its own cache layout: `jaxserve.strategy`).

Keys are produced in three stages so KV prediction can replace the first one:
`k_raw` (projection, before k-norm and RoPE) -> k-norm (OpenELM) -> RoPE at absolute positions.
Padding is on the right: a token is valid when its position is < `seq_lens` of its row.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.config import ModelConfig, rope_inv_freq
from jaxserve.kvcache.pages import KVPages
from jaxserve.models.attention import PagedAttention, attend

_INIT = nnx.initializers.normal(0.02)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple, dtype, init=_INIT) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


def _weight(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple, dtype, linear_in: int = 1):
    """A projection weight, stored [*in, *out] with `linear_in` input dims (see `dense`)."""
    return nnx.Param(_INIT(rngs.params(), shape, dtype), axes=axes, linear_in=linear_in)


def dense(x: jax.Array, w: nnx.Param, dtype) -> jax.Array:
    """x [..., *in] times a projection weight: [..., *out].

    The weight is stored [*in, *out] (its `linear_in` metadata counts the input dims) or, after
    `jaxserve.strategy.out_in_layout`, as one [prod(out), prod(in)] matrix.
    """
    meta = w.get_metadata()
    value = w[...].astype(dtype)
    if "out_in" not in meta:
        return jnp.tensordot(x, value, axes=meta["linear_in"])
    in_shape, out_shape = meta["out_in"]
    lead = x.shape[: x.ndim - len(in_shape)]
    y = jnp.einsum("OI,...I->...O", value, x.reshape(*lead, -1))
    return y.reshape(*lead, *out_shape)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype, axes=("norm",), *, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((dim,), dtype), axes=axes)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32.astype(x.dtype) * self.scale[...].astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE. x: [B, T, H, D]; positions: [B, T]."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(freqs)[:, :, None, :]
    sin = jnp.sin(freqs)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        d, hd = c.d_model, c.head_dim
        h, kh = c.num_heads[layer], c.num_kv_heads[layer]
        pd = jnp.dtype(c.param_dtype)
        self.num_heads, self.num_kv_heads, self.dtype = h, kh, jnp.dtype(c.dtype)
        self.q = _weight(rngs, (d, h, hd), ("embed", "heads", "head_dim"), pd)
        self.k = _weight(rngs, (d, kh, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.v = _weight(rngs, (d, kh, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.o = _weight(rngs, (h, hd, d), ("heads", "head_dim", "embed"), pd, linear_in=2)
        self.qkv_bias = c.qkv_bias
        if c.qkv_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = _param(rngs, (h, hd), ("heads", "head_dim"), pd, zeros)
            self.k_bias = _param(rngs, (kh, hd), ("kv_heads", "head_dim"), pd, zeros)
            self.v_bias = _param(rngs, (kh, hd), ("kv_heads", "head_dim"), pd, zeros)
        self.qk_norm = c.qk_norm
        if c.qk_norm:
            self.q_norm = RMSNorm(hd, c.rms_eps, pd, ("head_dim",), rngs=rngs)
            self.k_norm = RMSNorm(hd, c.rms_eps, pd, ("head_dim",), rngs=rngs)

    def _proj(self, x: jax.Array, name: str) -> jax.Array:
        y = dense(x, getattr(self, name), self.dtype)  # [B, T, H, hd]
        if self.qkv_bias:
            y = y + getattr(self, name + "_bias")[...].astype(self.dtype)
        return y

    def queries(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
        q = self._proj(x, "q")  # [B, T, H, hd]
        if self.qk_norm:
            q = self.q_norm(q)
        return apply_rope(q, positions, inv_freq)

    def kv_raw(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys before k-norm and RoPE, and values: two [B, T, K, hd]."""
        return self._proj(x, "k"), self._proj(x, "v")

    def finish_keys(self, k_raw: jax.Array, positions: jax.Array, inv_freq: jax.Array):
        k = self.k_norm(k_raw) if self.qk_norm else k_raw
        return apply_rope(k, positions, inv_freq)

    def out(self, y: jax.Array) -> jax.Array:
        return dense(y, self.o, self.dtype)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d, f = config.d_model, config.ffn_dim[layer]
        pd = jnp.dtype(config.param_dtype)
        self.dtype = jnp.dtype(config.dtype)
        self.gate = _weight(rngs, (d, f), ("embed", "mlp"), pd)
        self.up = _weight(rngs, (d, f), ("embed", "mlp"), pd)
        self.down = _weight(rngs, (f, d), ("mlp", "embed"), pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        g = dense(x, self.gate, self.dtype)
        u = dense(x, self.up, self.dtype)
        return dense(jax.nn.silu(g) * u, self.down, self.dtype)


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        pd = jnp.dtype(config.param_dtype)
        self.attn_norm = RMSNorm(config.d_model, config.rms_eps, pd, rngs=rngs)
        self.attn = Attention(config, layer, rngs=rngs)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_eps, pd, rngs=rngs)
        self.mlp = MLP(config, layer, rngs=rngs)


class Decoder(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = jnp.dtype(config.param_dtype)
        self.dtype = jnp.dtype(config.dtype)
        self.embed = _param(rngs, (config.vocab_size, config.d_model), ("vocab", "embed"), pd)
        self.layers = nnx.List([Block(config, i, rngs=rngs) for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.rms_eps, pd, rngs=rngs)
        if not config.tie_embeddings:
            self.lm_head = _weight(
                rngs, (config.d_model, config.vocab_size), ("embed", "vocab"), pd
            )
        self.inv_freq = tuple(rope_inv_freq(config))  # static: folded into the program

    def logits(self, x: jax.Array) -> jax.Array:
        x = self.final_norm(x)
        if self.config.tie_embeddings:
            return jnp.einsum("...D,VD->...V", x, self.embed[...].astype(self.dtype))
        return dense(x, self.lm_head, self.dtype)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        *,
        kv: KVPages | None = None,
        block_tables: jax.Array | None = None,
        seq_lens: jax.Array | None = None,
        prefix: bool = True,
        logits_index: jax.Array | None = None,
        kv_inputs: Sequence[tuple[jax.Array, jax.Array]] | None = None,
        kv_inputs_mask: jax.Array | None = None,
        return_kv: bool = False,
        attention=None,
    ):
        """Forward pass.

        tokens, positions: [B, T] int32. Without `kv`: full-sequence causal attention.
        With `kv`: the cache (`KVPages`), block_tables [B, max_pages], seq_lens [B] (the length
        of each sequence including these tokens); returns `(logits, kv)`.
        logits_index: [B] index into T; when given, logits are [B, V] for those tokens only.
        kv_inputs: per layer (k_raw, v) of shape [B, T, K_l, hd] used instead of the model's
        own projections (KV prediction feeds its predicted cache here).
        kv_inputs_mask: [B, T] bool; where given, only the tokens where it is True take
        `kv_inputs`, the others the model's own projections (a predicted prompt followed by
        the model's own tokens, as at generation time).
        return_kv: also return the per-layer (k_raw, v) this pass produced or consumed.
        attention: the cached attention, called per layer as
        `attention(layer, q, k, v, kv, block_tables, positions, seq_lens, prefix) -> (y, kv)`;
        default `PagedAttention()` (XLA). Another one may carry another cache as `kv`.
        """
        inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
        attention = attention or PagedAttention()
        x = self.embed[...][tokens].astype(self.dtype)  # [B, T, D]
        if kv is None:
            causal = positions[:, None, :] <= positions[:, :, None]  # [B, T, T]
        kv_out = []
        for i, layer in enumerate(self.layers):
            attn = layer.attn
            h = layer.attn_norm(x)
            q = attn.queries(h, positions, inv_freq)
            if kv_inputs is None:
                k_raw, v = attn.kv_raw(h)
            elif kv_inputs_mask is None:
                k_raw, v = kv_inputs[i]
            else:
                own_k, own_v = attn.kv_raw(h)
                use = kv_inputs_mask[:, :, None, None]
                k_raw = jnp.where(use, kv_inputs[i][0].astype(own_k.dtype), own_k)
                v = jnp.where(use, kv_inputs[i][1].astype(own_v.dtype), own_v)
            if return_kv:
                kv_out.append((k_raw, v))
            k = attn.finish_keys(k_raw.astype(self.dtype), positions, inv_freq)
            v = v.astype(self.dtype)
            if kv is None:
                y = attend(q, k, v, causal)
            else:
                y, kv = attention(i, q, k, v, kv, block_tables, positions, seq_lens, prefix)
            x = x + attn.out(y)
            x = x + layer.mlp(layer.mlp_norm(x))
        if logits_index is not None:
            x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)[:, 0]  # [B, D]
        logits = self.logits(x)
        out = (logits,) if kv is None else (logits, kv)
        if return_kv:
            out = out + (kv_out,)
        return out[0] if len(out) == 1 else out

    # -- the serving interface (`ModelRunner` calls these; KV prediction provides its own) --

    @property
    def decoder(self) -> Decoder:
        """The model that decodes on the cache (this one)."""
        return self

    def prefill_paged(
        self, tokens: jax.Array, lengths: jax.Array, kv: KVPages, block_tables: jax.Array
    ) -> tuple[jax.Array, KVPages]:
        """Write the prompts' cache into `kv`; logits [B, V] of each row's last prompt token.

        tokens: [B, T] right-padded prompts starting at position 0; lengths: [B].
        """
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        return self(
            tokens,
            positions,
            kv=kv,
            block_tables=block_tables,
            seq_lens=lengths,
            prefix=False,
            logits_index=jnp.maximum(lengths - 1, 0),
        )


def init_model(config: ModelConfig, seed: int = 0) -> Decoder:
    return Decoder(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> Decoder:
    """The model with `jax.ShapeDtypeStruct` leaves: no memory, any size."""
    return nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(params=0)))
