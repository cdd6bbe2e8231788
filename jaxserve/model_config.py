"""`ModelConfig`: one frozen dataclass for the Llama / Qwen2 / OpenELM families, and what is
derived from its fields alone (OpenELM's layer-wise shapes, the RoPE frequencies).

Per-layer fields (`num_heads`, `num_kv_heads`, `ffn_dim`) are tuples with one entry per layer,
because OpenELM varies them layer by layer; pass an int and it is repeated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

ARCHITECTURES = ("llama", "qwen2", "openelm")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: tuple[int, ...]  # query heads, per layer
    num_kv_heads: tuple[int, ...]  # key/value heads, per layer (GQA)
    head_dim: int
    ffn_dim: tuple[int, ...]  # hidden width of the gated MLP, per layer
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qk_norm: bool = False  # per-head RMSNorm on queries and keys (OpenELM)
    qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2)
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    architecture: str = "llama"  # weight naming in HF checkpoints
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        for field in ("num_heads", "num_kv_heads", "ffn_dim"):
            value = getattr(self, field)
            if isinstance(value, int):
                value = (value,) * self.num_layers
            value = tuple(int(v) for v in value)
            if len(value) != self.num_layers:
                raise ValueError(
                    f"{self.name}: {field} has {len(value)} entries for {self.num_layers} layers"
                )
            object.__setattr__(self, field, value)
        for h, kv in zip(self.num_heads, self.num_kv_heads):
            if kv <= 0 or h % kv:
                raise ValueError(
                    f"{self.name}: query heads ({h}) must be a multiple of kv heads ({kv})"
                )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {ARCHITECTURES}")

    # -- derived quantities ---------------------------------------------------------------

    @property
    def max_kv_heads(self) -> int:
        return max(self.num_kv_heads)

    @property
    def max_heads(self) -> int:
        return max(self.num_heads)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count, computed from the shapes (no weights needed)."""
        d, hd = self.d_model, self.head_dim
        total = 0
        for h, kv, f in zip(self.num_heads, self.num_kv_heads, self.ffn_dim):
            total += d * h * hd * 2 + d * kv * hd * 2  # q, o, k, v
            total += 3 * d * f + 2 * d  # gated MLP + two norms
            if self.qkv_bias:
                total += (h + 2 * kv) * hd
            if self.qk_norm:
                total += 2 * hd
        total += d  # final norm
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        elif not self.tie_embeddings:
            total += self.vocab_size * d  # the output head is compute, not a lookup
        return total

    def kv_bytes_per_token(self, itemsize: int = 4) -> int:
        return 2 * sum(self.num_kv_heads) * self.head_dim * itemsize  # each layer its own heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_divisible(v: float, divisor: int) -> int:
    """OpenELM's rounding of per-layer widths to a multiple of `divisor`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def openelm_layer_shapes(
    d_model: int,
    num_layers: int,
    head_dim: int,
    num_gqa_groups: int,
    qkv_multipliers: Sequence[float],
    ffn_multipliers: Sequence[float],
    ffn_dim_divisor: int,
) -> tuple[list[int], list[int], list[int]]:
    """Per-layer (query heads, kv heads, ffn width) by OpenELM's layer-wise scaling rule."""
    if len(qkv_multipliers) == 2 and num_layers != 2:
        qkv_multipliers = _linspace(qkv_multipliers[0], qkv_multipliers[1], num_layers)
    if len(ffn_multipliers) == 2 and num_layers != 2:
        ffn_multipliers = _linspace(ffn_multipliers[0], ffn_multipliers[1], num_layers)
    q_dims = [make_divisible(d_model * m, head_dim * num_gqa_groups) for m in qkv_multipliers]
    heads = [q // head_dim for q in q_dims]
    kv_heads = [h // num_gqa_groups for h in heads]
    ffn = [make_divisible(m * d_model, ffn_dim_divisor) for m in ffn_multipliers]
    return heads, kv_heads, ffn


def rope_inv_freq(config: ModelConfig) -> list[float]:
    """Inverse RoPE frequencies (head_dim/2 of them), with Llama-3 scaling when configured."""
    hd = config.head_dim
    inv = [1.0 / (config.rope_theta ** (2 * i / hd)) for i in range(hd // 2)]
    rs = config.rope_scaling
    if rs is None:
        return inv
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)  # high frequencies: unchanged
        elif wavelen > low_wavelen:
            out.append(f / rs.factor)  # low frequencies: fully scaled
        else:
            smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
                rs.high_freq_factor - rs.low_freq_factor
            )
            out.append((1 - smooth) * f / rs.factor + smooth * f)
    return out
