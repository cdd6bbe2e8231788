"""Model configurations by name: the presets, and the one place to import model configuration from.

Presets cover the tiny models this project trains and ships, a ~20M benchmark model, and the
full-size shapes of the checkpoints users load (checked with `jax.eval_shape`, no weights).
The dataclass itself is in `jaxserve.model_config`, the reading of an HF `config.json` in
`jaxserve.hf_config`; both are importable from here.
"""

from __future__ import annotations

from jaxserve.hf_config import from_hf_config, from_hf_dict  # noqa: F401 (importable from here)
from jaxserve.model_config import (  # noqa: F401 (importable from here)
    ARCHITECTURES,
    ModelConfig,
    RopeScaling,
    openelm_layer_shapes,
    rope_inv_freq,
)


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
