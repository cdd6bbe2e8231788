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

# the helper modules shared by test modules get pytest's assert messages too
pytest.register_assert_rewrite("engine_helpers", "sched_helpers", "server_helpers")


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


def save_openelm_hf(model, path) -> None:
    """Write `model` (architecture "openelm") as Apple ships OpenELM checkpoints: fused qkv and
    gate/up projections, its own config keys."""
    import json

    from jaxserve.models import safetensors_io

    c = model.config
    p = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    d = c.d_model
    t = {"transformer.token_embeddings.weight": p[("embed",)]}
    t["transformer.norm.weight"] = p[("final_norm", "scale")]
    for i in range(c.num_layers):
        L, pre = ("layers", i), f"transformer.layers.{i}."
        a = {n: p[L + ("attn", n)] for n in "qkvo"}
        t[pre + "attn.qkv_proj.weight"] = np.concatenate(
            [a[n].reshape(d, -1).T for n in "qkv"], axis=0
        )
        t[pre + "attn.out_proj.weight"] = a["o"].reshape(-1, d).T
        t[pre + "attn.q_norm.weight"] = p[L + ("attn", "q_norm", "scale")]
        t[pre + "attn.k_norm.weight"] = p[L + ("attn", "k_norm", "scale")]
        t[pre + "attn_norm.weight"] = p[L + ("attn_norm", "scale")]
        t[pre + "ffn_norm.weight"] = p[L + ("mlp_norm", "scale")]
        t[pre + "ffn.proj_1.weight"] = np.concatenate(
            [p[L + ("mlp", "gate")].T, p[L + ("mlp", "up")].T], axis=0
        )
        t[pre + "ffn.proj_2.weight"] = p[L + ("mlp", "down")].T
    hf = {
        "model_type": "openelm",
        "vocab_size": c.vocab_size,
        "model_dim": d,
        "num_transformer_layers": c.num_layers,
        "head_dim": c.head_dim,
        "num_query_heads": list(c.num_heads),
        "num_kv_heads": list(c.num_kv_heads),
        "ffn_multipliers": [f / d for f in c.ffn_dim],
        "ffn_dim_divisor": 16,
        "rope_freq_constant": 10000,
        "normalize_qk_projections": True,
        "share_input_output_layers": True,
        "max_context_length": c.max_seq_len,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)
    safetensors_io.save_file(t, os.path.join(path, "model.safetensors"))


def engine_config(num_pages: int, preemption: str = "swap", page_size: int = 4, **kw):
    """A `SchedulerConfig` for engine tests: batch 4, 128-token contexts, fixed costs (the
    tests' outcomes must not depend on a measured profile)."""
    from jaxserve.sched import SchedulerConfig

    fields = dict(
        max_batch=4,
        num_pages=num_pages,
        page_size=page_size,
        max_seq_len=128,
        preemption=preemption,
        host_pages=1000,
        swap_bandwidth=1e9,
        prefill_tokens_per_s=1e4,
        kv_bytes_per_page=1024,
        q0=1e-4,
        prefill_table=[(16, 1e-4), (64, 4e-4)],
    )
    fields.update(kw)
    return SchedulerConfig(**fields)


# Fixtures shared by several test modules; a module with a fixture of the same name overrides
# them. The session-scoped ones live for the whole session: no test may change what they return.


@pytest.fixture(scope="session")
def model() -> Decoder:
    """The engine tests' model: vocabulary 128, 128-token contexts, seed 11."""
    return random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=11)


@pytest.fixture(scope="session")
def runner(model):
    """A `ModelRunner` of `model`: its compiled programs are shared by the engine tests."""
    from jaxserve.runner import ModelRunner

    return ModelRunner(model)


@pytest.fixture(scope="session")
def parts():
    """The HTTP server tests' (model, runner, tokenizer): vocabulary 4096, the embedded
    tokenizer."""
    from jaxserve.runner import ModelRunner
    from jaxserve.tokenizer import load_default

    model = random_model(tiny_config(vocab_size=4096, max_seq_len=256))
    return model, ModelRunner(model), load_default()


@pytest.fixture(scope="module")
def server(parts):
    """A running `server_helpers.Server` on `parts` (one per test module)."""
    from server_helpers import Server

    s = Server(parts)
    yield s
    s.stop()
