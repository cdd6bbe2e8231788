"""Shared test setup: 8 simulated CPU devices, offline Hugging Face, a compilation cache.

The environment variables must be set before anything imports jax (or transformers), so they
come first in this file, which pytest imports before any test module.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from jaxserve.config import ModelConfig  # noqa: E402
from jaxserve.models.transformer import Decoder, abstract_model  # noqa: E402

_CACHE_DIR = os.environ.get("JAXSERVE_TEST_JAX_CACHE") or os.path.join(
    tempfile.gettempdir(), f"jaxserve-test-jax-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def tiny_config(**overrides) -> ModelConfig:
    """A small random-test config with GQA (4 query heads over 2 kv heads)."""
    fields = dict(
        name="test-tiny",
        vocab_size=97,
        d_model=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=12,
        ffn_dim=80,
        max_seq_len=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.15) -> Decoder:
    """A Decoder with random weights, built without running the (slow to compile) init."""
    return randomize(abstract_model(config), seed, std)


def randomize(model: nnx.Module, seed: int = 0, std: float = 0.15) -> nnx.Module:
    """Give every parameter visible random values in place (norm scales near 1, biases too).

    The default init (std 0.02, unit norms, zero biases) makes logits nearly uniform, which
    would let comparisons pass by accident.
    """
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()  # an array, or a ShapeDtypeStruct in an abstract model
        noise = rng.normal(0.0, std, value.shape)
        if path[-1] == "scale":
            noise = 1.0 + noise
        var.set_value(jax.numpy.asarray(noise.astype(np.float32), value.dtype))
    return model


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    """Factory fixture: `make_config(**overrides)` -> a tiny ModelConfig."""
    return tiny_config


@pytest.fixture
def randomize_params() -> Callable[..., nnx.Module]:
    """Fixture form of `randomize(model, seed=0, std=0.15)`."""
    return randomize
