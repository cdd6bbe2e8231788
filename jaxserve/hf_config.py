"""Hugging Face `config.json` to `ModelConfig` (Llama, Mistral, Qwen2 and OpenELM checkpoints)."""

from __future__ import annotations

import json
import os
from typing import Any

from jaxserve.errors import CheckpointError
from jaxserve.model_config import ModelConfig, RopeScaling, make_divisible


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
        ffn = [make_divisible(m * d, cfg.get("ffn_dim_divisor", 256)) for m in ffn_mult]
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
