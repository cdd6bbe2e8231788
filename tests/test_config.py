"""Model configs: preset sizes, HF config.json reading, errors, Llama-3 RoPE scaling."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxserve.config import PRESETS, RopeScaling, from_hf_config, rope_inv_freq
from jaxserve.models.transformer import abstract_model

# Published parameter counts of the checkpoints the full-size presets describe.
PUBLIC_PARAMS = {
    "llama-3.2-1b": 1.236e9,
    "llama-3-8b": 8.03e9,
    "qwen2.5-0.5b": 494e6,
    "openelm-1.1b": 1.08e9,
    "openelm-3b": 3.04e9,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _shape_params(config) -> int:
    state = nnx.state(abstract_model(config), nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("name", list(PUBLIC_PARAMS))
def test_full_size_presets_match_public_parameter_counts(name):
    config = PRESETS[name]
    count = _shape_params(config)
    assert count == config.num_params()
    assert abs(count - PUBLIC_PARAMS[name]) / PUBLIC_PARAMS[name] < 0.01, count


def test_small_presets():
    tiny, small = PRESETS["tiny"], PRESETS["small"]
    assert _shape_params(tiny) == tiny.num_params() <= 2_000_000
    assert _shape_params(small) == small.num_params()
    assert 18e6 <= small.num_params() <= 22e6


@pytest.mark.parametrize("name", ["openelm-1.1b", "openelm-3b"])
def test_openelm_heads_vary_per_layer(name):
    c = PRESETS[name]
    assert c.num_heads[0] < c.num_heads[-1]
    assert c.num_kv_heads[0] < c.num_kv_heads[-1]
    assert c.ffn_dim[0] < c.ffn_dim[-1]
    assert list(c.num_heads) == sorted(c.num_heads)
    assert c.max_kv_heads == c.num_kv_heads[-1]


def _save(tmp_path, hf_config, name="ckpt"):
    path = tmp_path / name
    hf_config.save_pretrained(path)
    return path


def test_from_hf_config_llama_with_llama3_rope(tmp_path):
    from transformers import LlamaConfig

    hf = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=5,
        eos_token_id=[6, 7],
    )
    c = from_hf_config(_save(tmp_path, hf, "my-llama"))
    assert c.name == "my-llama" and c.architecture == "llama"
    assert (c.vocab_size, c.d_model, c.num_layers, c.head_dim) == (300, 64, 3, 16)
    assert c.num_heads == (4, 4, 4) and c.num_kv_heads == (2, 2, 2) and c.ffn_dim == (96,) * 3
    assert c.rms_eps == 1e-5 and c.rope_theta == 500000.0 and c.max_seq_len == 512
    assert c.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
    assert c.tie_embeddings and not c.qkv_bias and not c.qk_norm
    assert (c.bos_token_id, c.eos_token_id) == (5, 6)


def test_from_hf_config_qwen2(tmp_path):
    from transformers import Qwen2Config

    hf = Qwen2Config(
        vocab_size=200,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=3,
        eos_token_id=4,
    )
    c = from_hf_config(_save(tmp_path, hf))
    assert c.architecture == "qwen2" and c.qkv_bias and c.rope_scaling is None
    assert (c.vocab_size, c.d_model, c.num_layers, c.head_dim) == (200, 48, 2, 8)
    assert c.num_heads == (6, 6) and c.num_kv_heads == (2, 2) and c.ffn_dim == (80, 80)
    assert c.rope_theta == 1e6 and c.rms_eps == 1e-6 and c.max_seq_len == 1024
    assert not c.tie_embeddings and (c.bos_token_id, c.eos_token_id) == (3, 4)


def test_from_hf_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_hf_config(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf_config(tmp_path / "empty")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 8}))
    with pytest.raises(ValueError, match="gpt_neox"):
        from_hf_config(bad)

    from transformers import LlamaConfig

    path = _save(tmp_path, LlamaConfig(hidden_size=32, num_attention_heads=4), "partial")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["intermediate_size"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="intermediate_size"):
        from_hf_config(path)


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_rope_inv_freq_llama3_matches_transformers(tmp_path, head_dim):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(
        vocab_size=100,
        hidden_size=4 * head_dim,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE),
        max_position_embeddings=8192,
    )
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    want = want.double().numpy()
    ours = np.array(rope_inv_freq(from_hf_config(_save(tmp_path, hf))))
    assert ours.shape == want.shape == (head_dim // 2,)
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=0)
    # The scaling really changed something (low frequencies divided by the factor).
    plain = np.array(rope_inv_freq(from_hf_config(tmp_path / "ckpt").replace(rope_scaling=None)))
    assert np.isclose(ours[-1], plain[-1] / 8.0) and ours[0] == plain[0]
