"""Weight loading: HF safetensors (errors, OpenELM fused tensors), safetensors io, orbax."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import random_model, save_openelm_hf, tiny_config
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxserve.config import RopeScaling
from jaxserve.errors import CheckpointError
from jaxserve.models import safetensors_io
from jaxserve.models.checkpoint import (
    CONFIG_FILE,
    load_model,
    restore_checkpoint,
    save_checkpoint,
)
from jaxserve.models.weights import load_hf, save_hf


def _flat(model) -> dict:
    return {k: v[...] for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        assert np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), k


def _logits(model, seed: int = 0, batch: int = 2, length: int = 9) -> np.ndarray:
    graphdef, state = nnx.split(model)
    tokens = np.random.default_rng(seed).integers(0, model.config.vocab_size, (batch, length))
    positions = np.broadcast_to(np.arange(length), (batch, length))

    @jax.jit
    def forward(state, tokens, positions):
        return nnx.merge(graphdef, state)(tokens, positions)

    return np.asarray(forward(state, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions)))


# -- HF checkpoint errors -----------------------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path):
    """A valid single-file HF Llama checkpoint written by save_hf."""
    path = tmp_path / "hf"
    save_hf(random_model(tiny_config()), path)
    return path


def _tensors(path) -> dict[str, np.ndarray]:
    f = safetensors_io.SafetensorsFile(str(path / "model.safetensors"))
    return {k: np.array(f.get(k)) for k in f.keys()}


def test_load_hf_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf(tmp_path / "absent")


def test_load_hf_without_safetensors(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        load_hf(hf_dir)


def test_load_hf_unknown_architecture(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mamba"):
        load_hf(hf_dir)


def test_load_hf_wrong_shape_names_tensor(hf_dir):
    tensors = _tensors(hf_dir)
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:-4]
    safetensors_io.save_file(tensors, str(hf_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=re.escape(name)):
        load_hf(hf_dir)


def test_load_hf_missing_tensor_names_it(hf_dir):
    tensors = _tensors(hf_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    del tensors[name]
    safetensors_io.save_file(tensors, str(hf_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_hf(hf_dir)


def test_load_hf_index_naming_absent_file(tmp_path):
    path = tmp_path / "sharded"
    save_hf(random_model(tiny_config()), path, max_file_bytes=20_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    name = "model.norm.weight"
    index["weight_map"][name] = "model-00009-of-00009.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00009-of-00009.safetensors"):
        load_hf(path)


# -- OpenELM --------------------------------------------------------------------------------------


def test_openelm_checkpoint_reproduces_model(tmp_path):
    d, hd = 64, 16
    ffn_mult = [1.0, 1.5, 2.0]  # OpenELM's per-layer multipliers, divisor 16
    config = tiny_config(
        name="elm",
        d_model=d,
        head_dim=hd,
        num_layers=3,
        num_heads=(2, 4, 6),
        num_kv_heads=(1, 2, 3),
        ffn_dim=[int(m * d) for m in ffn_mult],
        qk_norm=True,
        rms_eps=1e-6,
        architecture="openelm",
        max_seq_len=128,
    )
    model = random_model(config, seed=7)
    path = tmp_path / "elm"
    save_openelm_hf(model, path)

    loaded = load_hf(path)
    assert loaded.config == config
    _assert_same_params(loaded, model)
    np.testing.assert_array_equal(_logits(loaded), _logits(model))


# -- safetensors io -------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "bf16": rng.normal(size=(4, 2, 3)).astype(ml_dtypes.bfloat16),
        "f16": rng.normal(size=(7,)).astype(np.float16),
        "i32": rng.integers(-9, 9, (2, 2)).astype(np.int32),
        "u8": rng.integers(0, 255, (5,)).astype(np.uint8),
        "mask": rng.random(6) > 0.5,
        "f64": np.array([[3.5]], np.float64),
    }
    path = str(tmp_path / "x.safetensors")
    safetensors_io.save_file(tensors, path, metadata={"format": "np"})
    f = safetensors_io.SafetensorsFile(path)
    assert sorted(f.keys()) == sorted(tensors)
    for name, want in tensors.items():
        got = f.get(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name
    assert f.get("bf16").astype(np.float32).std() > 0.3
    with open(path, "rb") as fh:
        (n,) = np.frombuffer(fh.read(8), "<u8")
        assert (8 + n) % 8 == 0
        assert json.loads(fh.read(n))["__metadata__"] == {"format": "np"}


def test_safetensors_scalar_round_trip(tmp_path):
    path = str(tmp_path / "s.safetensors")
    safetensors_io.save_file({"s": np.array(3.5, np.float32)}, path)
    assert safetensors_io.SafetensorsFile(path).get("s").shape == ()


def test_safetensors_readable_by_reference_library(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.int64)}
    path = str(tmp_path / "x.safetensors")
    safetensors_io.save_file(tensors, path)
    back = safetensors_numpy.load_file(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)


# -- orbax checkpoints ----------------------------------------------------------------------------

ORBAX_CONFIGS = {
    "bf16-qwen-rope": lambda: tiny_config(
        architecture="qwen2",
        qkv_bias=True,
        tie_embeddings=False,
        param_dtype="bfloat16",
        dtype="bfloat16",
        rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64),
    ),
    "openelm-like": lambda: tiny_config(
        num_layers=3,
        num_heads=(2, 4, 6),
        num_kv_heads=(1, 2, 3),
        ffn_dim=(48, 64, 96),
        qk_norm=True,
        architecture="openelm",
    ),
}


@pytest.mark.parametrize("name", list(ORBAX_CONFIGS))
def test_orbax_round_trip_bit_exact(tmp_path, name):
    model = random_model(ORBAX_CONFIGS[name](), seed=3)
    save_checkpoint(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / CONFIG_FILE).is_file()
    restored = restore_checkpoint(tmp_path / "ckpt")
    assert restored.config == model.config  # incl. the nested RopeScaling and tuples
    _assert_same_params(restored, model)
    np.testing.assert_array_equal(_logits(restored), _logits(model))


def test_orbax_steps(tmp_path):
    config = tiny_config()
    first, second = random_model(config, seed=1), random_model(config, seed=2)
    save_checkpoint(first, tmp_path, step=1)
    save_checkpoint(second, tmp_path, step=2)
    _assert_same_params(restore_checkpoint(tmp_path), second)  # the latest save
    _assert_same_params(restore_checkpoint(tmp_path, step=1), first)
    save_checkpoint(first, tmp_path, step=2)  # overwriting a step replaces it
    _assert_same_params(restore_checkpoint(tmp_path), first)


def _head_shardings(mesh: Mesh, model) -> dict:
    def spec(path: tuple) -> P:
        name = path[-1]
        if name == "q":
            return P(None, "model", None)  # [D, heads, hd]
        if name in ("k", "v"):
            return P(None, "data", None)  # [D, kv_heads, hd]
        if name == "o":
            return P("model", None, None)  # [heads, hd, D]
        if name == "embed":
            return P(None, "model")
        return P()

    return {path: NamedSharding(mesh, spec(path)) for path in _flat(model)}


@pytest.mark.parametrize("form", ["flat", "nested"])
def test_orbax_restore_into_sharded_layout(tmp_path, form):
    assert len(jax.devices()) == 8, "conftest should give 8 simulated CPU devices"
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    model = random_model(tiny_config(), seed=4)
    save_checkpoint(model, tmp_path)
    shardings = _head_shardings(mesh, model)
    arg = shardings
    if form == "nested":
        arg = nnx.to_pure_dict(nnx.from_flat_state(shardings))
        assert isinstance(arg["layers"][0]["attn"], dict)
    restored = restore_checkpoint(tmp_path, shardings=arg)
    flat = _flat(restored)
    for path, want in shardings.items():
        assert flat[path].sharding.is_equivalent_to(want, flat[path].ndim), path
    q = flat[("layers", 0, "attn", "q")]
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[1] == 1
    _assert_same_params(restored, model)
    np.testing.assert_allclose(_logits(restored), _logits(model), atol=1e-5, rtol=0)
    # A sharded model saves too, and restores onto one device by default.
    save_checkpoint(restored, tmp_path / "resaved")
    again = restore_checkpoint(tmp_path / "resaved")
    assert len(_flat(again)[("layers", 0, "attn", "q")].sharding.device_set) == 1
    _assert_same_params(again, model)


def test_restore_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_checkpoint(tmp_path / "absent")
    save_checkpoint(random_model(tiny_config()), tmp_path)
    bad = tmp_path / CONFIG_FILE
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        restore_checkpoint(tmp_path)
    bad.write_text(json.dumps({"format_version": 1, "step": None, "config": {"name": "x"}}))
    with pytest.raises(ValueError, match=re.escape(CONFIG_FILE)):
        restore_checkpoint(tmp_path)


def test_load_model_dispatch(tmp_path):
    model = random_model(tiny_config(), seed=5)
    save_checkpoint(model, tmp_path / "native")
    save_hf(model, tmp_path / "hf")
    for kind in ("native", "hf"):
        loaded = load_model(tmp_path / kind)
        _assert_same_params(loaded, model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"jaxserve_config\.json.*config\.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "absent")
