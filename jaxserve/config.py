"""Model configuration: one frozen dataclass for the Llama / Qwen2 / OpenELM families.

Per-layer fields (`num_heads`, `num_kv_heads`, `ffn_dim`) are tuples with one entry per layer,
because OpenELM varies them layer by layer; pass an int and it is repeated. Presets cover the
tiny models this project trains and ships, a ~20M benchmark model, and the full-size shapes of
the checkpoints users load (checked with `jax.eval_shape`, no weights).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from jaxserve.errors import CheckpointError

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


def _make_divisible(v: float, divisor: int) -> int:
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
    q_dims = [_make_divisible(d_model * m, head_dim * num_gqa_groups) for m in qkv_multipliers]
    heads = [q // head_dim for q in q_dims]
    kv_heads = [h // num_gqa_groups for h in heads]
    ffn = [_make_divisible(m * d_model, ffn_dim_divisor) for m in ffn_multipliers]
    return heads, kv_heads, ffn


def _openelm(name: str, d_model: int, num_layers: int, head_dim: int) -> ModelConfig:
    heads, kv, ffn = openelm_layer_shapes(
        d_model, num_layers, head_dim, 4, (0.5, 1.0), (0.5, 4.0), 256
    )
    return ModelConfig(
        name=name,
        vocab_size=32000,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        ffn_dim=ffn,
        rms_eps=1e-6,
        qk_norm=True,
        tie_embeddings=True,
        max_seq_len=2048,
        dtype="bfloat16",
        param_dtype="bfloat16",
        architecture="openelm",
        bos_token_id=1,
        eos_token_id=2,
    )


PRESETS: dict[str, ModelConfig] = {
    # The embedded default: small enough to train and serve on a laptop CPU in minutes.
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=4096,
        d_model=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        ffn_dim=384,
        max_seq_len=1024,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # A C-type auxiliary model for `tiny` (KV prediction): same tokenizer, ~8x fewer
    # non-embedding parameters.
    "tiny-aux": ModelConfig(
        name="tiny-aux",
        vocab_size=4096,
        d_model=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
        ffn_dim=192,
        max_seq_len=1024,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # A mid-size C-type auxiliary model for `tiny`: ~half its non-embedding parameters. Its
    # cache per layer (3 KV heads x 32) is not narrower than the base's (2 x 32), so a KV
    # predictor reads at least as many numbers per token as it has to produce.
    "tiny-aux-m": ModelConfig(
        name="tiny-aux-m",
        vocab_size=4096,
        d_model=96,
        num_layers=3,
        num_heads=3,
        num_kv_heads=3,
        head_dim=32,
        ffn_dim=288,
        max_seq_len=1024,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # ~20M parameters, the benchmark model.
    "small": ModelConfig(
        name="small",
        vocab_size=8192,
        d_model=384,
        num_layers=6,
        num_heads=6,
        num_kv_heads=2,
        head_dim=64,
        ffn_dim=1536,
        tie_embeddings=False,
        max_seq_len=2048,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "llama-3.2-1b": ModelConfig(
        name="llama-3.2-1b",
        vocab_size=128256,
        d_model=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        ffn_dim=8192,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
        tie_embeddings=True,
        max_seq_len=131072,
        dtype="bfloat16",
        param_dtype="bfloat16",
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "llama-3-8b": ModelConfig(
        name="llama-3-8b",
        vocab_size=128256,
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        ffn_dim=14336,
        rope_theta=500000.0,
        tie_embeddings=False,
        max_seq_len=8192,
        dtype="bfloat16",
        param_dtype="bfloat16",
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "qwen2.5-0.5b": ModelConfig(
        name="qwen2.5-0.5b",
        vocab_size=151936,
        d_model=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        ffn_dim=4864,
        rms_eps=1e-6,
        rope_theta=1000000.0,
        qkv_bias=True,
        tie_embeddings=True,
        max_seq_len=32768,
        dtype="bfloat16",
        param_dtype="bfloat16",
        architecture="qwen2",
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "openelm-1.1b": _openelm("openelm-1.1b", 2048, 28, 64),
    "openelm-3b": _openelm("openelm-3b", 3072, 36, 128),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# -- Hugging Face config.json ----------------------------------------------------------------


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def from_hf_dict(cfg: dict[str, Any], name: str = "hf") -> ModelConfig:
    """Build a ModelConfig from the contents of an HF `config.json`."""
    model_type = cfg.get("model_type")
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    dtype = {"float16": "float16", "bfloat16": "bfloat16"}.get(str(dtype), "float32")
    common = dict(
        name=name,
        param_dtype=dtype,
        dtype=dtype,
        bos_token_id=_first_id(cfg.get("bos_token_id")),
        eos_token_id=_first_id(cfg.get("eos_token_id")),
    )
    if model_type in ("llama", "mistral", "qwen2"):
        n_layers = cfg["num_hidden_layers"]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        scaling = None
        rs = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
        rope_type = rs.get("rope_type", rs.get("type"))
        if rope_type == "llama3":
            scaling = RopeScaling(
                float(rs["factor"]),
                float(rs["low_freq_factor"]),
                float(rs["high_freq_factor"]),
                int(rs["original_max_position_embeddings"]),
            )
        elif rope_type not in (None, "default"):
            raise ValueError(f"unsupported rope scaling type {rope_type!r} in config.json")
        theta = cfg.get("rope_theta") or rs.get("rope_theta") or 10000.0
        qwen = model_type == "qwen2"
        return ModelConfig(
            vocab_size=cfg["vocab_size"],
            d_model=cfg["hidden_size"],
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            ffn_dim=cfg["intermediate_size"],
            rms_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            qkv_bias=qwen or bool(cfg.get("attention_bias")),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            architecture="qwen2" if qwen else "llama",
            **common,
        )
    if model_type == "openelm":
        heads, kv = cfg["num_query_heads"], cfg["num_kv_heads"]
        d = cfg["model_dim"]
        ffn_mult = cfg["ffn_multipliers"]
        if isinstance(ffn_mult, (int, float)):
            ffn_mult = [ffn_mult] * cfg["num_transformer_layers"]
        ffn = [_make_divisible(m * d, cfg.get("ffn_dim_divisor", 256)) for m in ffn_mult]
        return ModelConfig(
            vocab_size=cfg["vocab_size"],
            d_model=d,
            num_layers=cfg["num_transformer_layers"],
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=cfg["head_dim"],
            ffn_dim=ffn,
            rms_eps=1e-6,
            rope_theta=float(cfg.get("rope_freq_constant", 10000)),
            qk_norm=bool(cfg.get("normalize_qk_projections", True)),
            tie_embeddings=bool(cfg.get("share_input_output_layers", True)),
            max_seq_len=cfg.get("max_context_length", 2048),
            architecture="openelm",
            **common,
        )
    raise ValueError(
        f"unknown architecture: config.json has model_type={model_type!r}; "
        "supported: llama, mistral, qwen2, openelm"
    )


def from_hf_config(path: str | os.PathLike) -> ModelConfig:
    """Read `config.json` from a local HF-format checkpoint directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} has no config.json (not an HF-format checkpoint)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    try:
        return from_hf_dict(cfg, name=os.path.basename(os.path.normpath(path)))
    except KeyError as e:
        raise CheckpointError(f"{cfg_path}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None


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
