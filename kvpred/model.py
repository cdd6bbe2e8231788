"""The KV Prediction model: a frozen base B, an auxiliary model A and a predictor P.

Training path (`train_forward`): A reads the whole sequence and returns its raw per-layer cache;
P maps it to a predicted base cache; B's queries attend causally to the predicted cache only
(its own k/v projections are not used; or, with `predicted_until`, to the predicted cache of a
prefix of each row followed by B's own cache of the rest), which gives CE_B; a separate pass
of B under `stop_gradient` gives the target cache. Gradients reach A and P through B's
activations; the trainer never updates B's parameters.

Inference path (`prefill_paged`, what `ModelRunner` calls to prefill): A reads prompt[:-1],
P predicts B's raw cache, B's own k-norm and RoPE finish the keys at absolute positions, and the
result is written into the *same paged cache* serving uses, through the same insert path
(`write_all_layers`). B then runs the last prompt token on top of that cache (writing its own
k, v) and produces the first token's logits; decoding continues on B alone (`decoder`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.kvcache.pages import KVPages, write_all_layers
from jaxserve.models.transformer import Decoder
from kvpred.predictor import KVPredictor


class KVPModel(nnx.Module):
    def __init__(self, base: Decoder, aux: Decoder, predictor: KVPredictor):
        if aux.config.vocab_size != base.config.vocab_size:
            raise ValueError("the auxiliary model must share the base's vocabulary")
        if len(predictor.layer_map) != base.config.num_layers:
            raise ValueError("the predictor's layer map does not match the base's layers")
        self.base = base
        self.aux = aux
        self.predictor = predictor

    @property
    def config(self) -> ModelConfig:
        return self.base.config

    @property
    def decoder(self) -> Decoder:
        return self.base

    # -- training ---------------------------------------------------------------------------

    def train_forward(self, tokens: jax.Array, predicted_until: jax.Array | None = None) -> dict:
        """tokens [B, T] -> logits of B on the predicted cache, logits of A, and per base
        layer the predicted and target (k_raw, v).

        predicted_until [B]: B reads the predicted cache for positions below it and its own
        k, v from there on, as when it generates after a predicted prompt; None: the
        predicted cache everywhere (the paper's training)."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        logits_a, aux_kv = self.aux(tokens, positions, return_kv=True)
        pred = self.predictor(aux_kv)
        mask = None if predicted_until is None else positions < predicted_until[:, None]
        logits_b = self.base(tokens, positions, kv_inputs=pred, kv_inputs_mask=mask)
        _, target = self.base(tokens, positions, return_kv=True)
        target = jax.lax.stop_gradient(target)
        return {"logits_b": logits_b, "logits_a": logits_a, "pred_kv": pred, "target_kv": target}

    # -- inference --------------------------------------------------------------------------

    def predict_cache(
        self, tokens: jax.Array, positions: jax.Array
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """Run A and P on `tokens`: the base's per-layer keys (normed, rotated) and values."""
        # A's logits are not needed: ask for one row's so its LM head costs one token
        first = jnp.zeros((tokens.shape[0],), jnp.int32)
        _, aux_kv = self.aux(tokens, positions, logits_index=first, return_kv=True)
        pred = self.predictor(aux_kv)
        inv_freq = jnp.asarray(self.base.inv_freq, jnp.float32)
        dtype = self.base.dtype
        ks, vs = [], []
        for layer, (k_raw, v) in zip(self.base.layers, pred):
            ks.append(layer.attn.finish_keys(k_raw.astype(dtype), positions, inv_freq))
            vs.append(v.astype(dtype))
        return ks, vs

    def prefill_paged(
        self, tokens: jax.Array, lengths: jax.Array, kv: KVPages, block_tables: jax.Array
    ) -> tuple[jax.Array, KVPages]:
        """Same contract as `Decoder.prefill_paged`, with the prompt's cache predicted."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        ks, vs = self.predict_cache(tokens, positions)
        predicted = positions < (lengths - 1)[:, None]  # prompt[:-1]
        kv = write_all_layers(kv, block_tables, positions, predicted, ks, vs)
        last_pos = jnp.maximum(lengths - 1, 0)[:, None]  # [B, 1]
        last_tok = jnp.take_along_axis(tokens, last_pos, axis=1)
        logits, kv = self.base(
            last_tok,
            last_pos,
            kv=kv,
            block_tables=block_tables,
            seq_lens=lengths,
            prefix=True,
            logits_index=jnp.zeros((b,), jnp.int32),
        )
        return logits, kv


def trainable_filter():
    """Parameters the KVP trainer updates: the auxiliary model's and the predictor's."""
    return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("aux"), nnx.PathContains("predictor")))
