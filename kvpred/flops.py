"""Time-to-first-token FLOPs and memory of base, auxiliary and KV-prediction prefills.

Two counts, both for a prompt of N tokens:

* "params" (the KV Prediction paper's formula): a forward pass costs 2 FLOPs per parameter
  per token, embeddings counted, so a base prefill is 2 * N * params(B) and a KVP prefill is
  2 * (N - 1) * (params(A) + params(P)) + 2 * params(B) (A and P read prompt[:-1], B runs the
  last token). The predicted speedup is then about params(B) / params(A).
* "attention" (what the hardware does): every matrix product that is actually run, with causal
  attention's N^2 terms: per layer 2 * T * (q, k, v, o projections + gated MLP) FLOPs plus
  2 * 2 * H * hd per (query, key) pair, and the LM head once (only the last token's logits
  are needed). An embedding lookup is free. A KVP prefill runs A's layers on N - 1 tokens
  without its LM head, the predictor, and B's layers on 1 token attending to N keys.
"""

from __future__ import annotations

from jaxserve.config import ModelConfig

KINDS = ("params", "attention")


def layer_matmul_params(c: ModelConfig, layer: int) -> int:
    d, hd = c.d_model, c.head_dim
    h, kv, f = c.num_heads[layer], c.num_kv_heads[layer], c.ffn_dim[layer]
    return d * h * hd * 2 + d * kv * hd * 2 + 3 * d * f


def _attn_pairs(num_queries: int, first_pos: int) -> int:
    """(query, key) pairs of causal attention for queries at first_pos .. first_pos+n-1."""
    n = num_queries
    return n * first_pos + n * (n + 1) // 2


def prefill_flops(
    c: ModelConfig, n: int, kind: str = "params", *, lm_head: bool = True, first_pos: int = 0
) -> int:
    """FLOPs of running `n` tokens (at positions first_pos..) through model `c`."""
    if kind not in KINDS:
        raise ValueError(f"FLOPs kind must be one of {KINDS}, not {kind!r}")
    if n <= 0:
        return 0
    if kind == "params":
        return 2 * n * c.num_params(include_embeddings=True)
    total = 0
    pairs = _attn_pairs(n, first_pos)
    for i in range(c.num_layers):
        total += 2 * n * layer_matmul_params(c, i)
        total += 2 * 2 * c.num_heads[i] * c.head_dim * pairs
    if lm_head:
        total += 2 * c.d_model * c.vocab_size
    return total


def kvp_prefill_flops(
    base: ModelConfig, aux: ModelConfig, predictor_params: int, n: int, kind: str = "params"
) -> int:
    """FLOPs of a KV-prediction prefill of an `n`-token prompt."""
    if kind not in KINDS:
        raise ValueError(f"FLOPs kind must be one of {KINDS}, not {kind!r}")
    m = max(n - 1, 0)
    aux_f = prefill_flops(aux, m, kind, lm_head=False)
    pred_f = 2 * m * predictor_params
    base_f = prefill_flops(base, 1, kind, first_pos=m)
    return aux_f + pred_f + base_f


def param_bytes(c: ModelConfig) -> int:
    import numpy as np

    return c.num_params(include_embeddings=True) * np.dtype(c.param_dtype).itemsize
