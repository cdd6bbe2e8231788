"""Logit parity with the PyTorch reference (transformers) for HF Llama / Qwen2 checkpoints."""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip(
    "torch",
    reason="parity tests need the PyTorch reference implementation (pip install -e .[test])",
)
transformers = pytest.importorskip("transformers")

from jaxserve.models.weights import load_hf, save_hf  # noqa: E402

# max |ours - torch| / max |torch|, fp32: measured 3.9e-7 to 1.1e-6 over the cases and lengths
# here (2026-12, CPU); the bound leaves a margin of ~5x for other BLAS summation orders
RTOL = 5e-6
LENGTHS = (1, 7, 33)
BATCH = 2

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rms_norm_eps=1e-5)),
    "llama3-rope-tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_theta=10000.0,
            tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6)),
}


def _torch_model(case: str, seed: int = 0):
    config_cls, model_cls, extra = CASES[case]
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.15
            p.copy_(1.0 + noise if "norm" in name else noise)
    return model


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def _our_logits(model, tokens: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, positions):
        return nnx.merge(graphdef, state)(tokens, positions)

    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return np.asarray(forward(state, jnp.asarray(tokens, jnp.int32), positions))


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 1.0  # visibly random weights
    err = np.abs(ours - ref).max() / scale
    assert err < RTOL, f"relative logit error {err:.2e}"


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    """(case, torch model, HF directory written by save_pretrained)."""
    model = _torch_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def test_logits_match_transformers(saved):
    case, ref, path = saved
    ours = load_hf(path)
    c = ours.config
    assert c.architecture == ("qwen2" if case == "qwen2" else "llama")
    assert c.qkv_bias == (case == "qwen2")
    assert (c.rope_scaling is not None) == (case == "llama3-rope-tied")
    rng = np.random.default_rng(0)
    for t in LENGTHS:
        tokens = rng.integers(0, c.vocab_size, (BATCH, t))
        _assert_close(_our_logits(ours, tokens), _torch_logits(ref, tokens))


def _flat(model) -> dict:
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_sharded_checkpoint_loads_identically(saved, tmp_path):
    case, ref, path = saved
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(glob.glob(str(tmp_path / "*.safetensors"))) > 1
    one, many = _flat(load_hf(path)), _flat(load_hf(tmp_path))
    assert one.keys() == many.keys()
    for k in one:
        assert np.array_equal(one[k], many[k]), k


def test_save_hf_round_trips_through_transformers(saved, tmp_path):
    case, ref, path = saved
    save_hf(load_hf(path), tmp_path)
    model_cls = getattr(transformers, CASES[case][1])
    back = model_cls.from_pretrained(tmp_path).float().eval()
    want = dict(ref.state_dict())
    got = dict(back.state_dict())
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    tokens = np.random.default_rng(1).integers(0, ref.config.vocab_size, (BATCH, 7))
    np.testing.assert_array_equal(_torch_logits(back, tokens), _torch_logits(ref, tokens))
