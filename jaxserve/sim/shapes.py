"""Model shapes for the analytical cost model: what a roofline needs, no weights.

`ModelShape.from_config` reads any `jaxserve.config.ModelConfig` (the engine's presets, an HF
config.json); the presets below add the papers' models that the engine has no preset for,
from their published configurations (OPT-13B and GPT-3 175B use a plain 4x MLP, not a gated
one). Llama-3-8B comes from the engine's own preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxserve.config import PRESETS, ModelConfig

__all__ = ["MODELS", "ModelShape", "get_model"]


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    d_model: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (GQA)
    head_dim: int
    ffn_dim: int  # MLP hidden width
    vocab_size: int
    gated_mlp: bool = True  # three MLP matrices (SwiGLU) instead of two
    max_seq_len: int = 2048

    @classmethod
    def from_config(cls, c: ModelConfig) -> ModelShape:
        return cls(
            name=c.name,
            num_layers=c.num_layers,
            d_model=c.d_model,
            num_heads=max(c.num_heads),
            num_kv_heads=max(c.num_kv_heads),
            head_dim=c.head_dim,
            ffn_dim=max(c.ffn_dim),
            vocab_size=c.vocab_size,
            gated_mlp=True,
            max_seq_len=c.max_seq_len,
        )

    @property
    def layer_params(self) -> int:
        """Matrix parameters of one layer (attention projections + MLP)."""
        d, hd = self.d_model, self.head_dim
        attn = 2 * d * self.num_heads * hd + 2 * d * self.num_kv_heads * hd
        return attn + (3 if self.gated_mlp else 2) * d * self.ffn_dim

    @property
    def num_params(self) -> int:
        """Matrix parameters plus the embedding and the output head (untied)."""
        return self.num_layers * self.layer_params + 2 * self.vocab_size * self.d_model

    def kv_bytes_per_token(self, itemsize: int) -> int:
        """K and V of one token, every layer and head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


MODELS: dict[str, ModelShape] = {
    "opt-13b": ModelShape("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, gated_mlp=False),
    "llama-3-8b": ModelShape.from_config(PRESETS["llama-3-8b"]),
    # Qwen2.5-32B
    "qwen-32b": ModelShape("qwen-32b", 64, 5120, 40, 8, 128, 27648, 152064, max_seq_len=32768),
    "gpt3-175b": ModelShape("gpt3-175b", 96, 12288, 96, 96, 128, 49152, 50257, gated_mlp=False),
}


def get_model(name: str) -> ModelShape:
    """A shape preset, or any engine preset (`jaxserve.config.PRESETS`) by name."""
    if name in MODELS:
        return MODELS[name]
    if name in PRESETS:
        return ModelShape.from_config(PRESETS[name])
    known = sorted(set(MODELS) | set(PRESETS))
    raise ValueError(f"unknown model {name!r}; known: {known}")
