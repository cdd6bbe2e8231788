"""HF-format checkpoints (config.json + safetensors) <-> our parameters.

Our layouts are einsum-friendly: q/k/v `[D, heads, hd]`, o `[heads, hd, D]`, MLP `[in, out]`.
HF Linear weights are `[out, in]`. Each of our parameters is made from one or more HF tensors
by a small rule; `hf_tensor_rules` lists them per architecture, so loading and saving are
the same table read in two directions.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig, from_hf_config
from jaxserve.errors import CheckpointError
from jaxserve.models import safetensors_io
from jaxserve.models.transformer import Decoder, abstract_model

# A rule: (our path, [hf names], to_ours(list of hf arrays) -> ours, to_hf(ours) -> list of hf)
Rule = tuple[tuple, list[str], Callable, Callable]


def _linear(shape_out: tuple[int, ...]) -> tuple[Callable, Callable]:
    """HF [out, in] <-> ours [in, *shape_out]."""

    def to_ours(ws):
        return ws[0].T.reshape(ws[0].shape[1], *(shape_out or (ws[0].shape[0],)))

    def to_hf(w):
        return [w.reshape(w.shape[0], -1).T]

    return to_ours, to_hf


def _linear_in(shape_in: tuple[int, ...]) -> tuple[Callable, Callable]:
    """HF [out, in] <-> ours [*shape_in, out] (the attention output projection)."""

    def to_ours(ws):
        return ws[0].T.reshape(*shape_in, ws[0].shape[0])

    def to_hf(w):
        return [w.reshape(-1, w.shape[-1]).T]

    return to_ours, to_hf


def _same(shape: tuple[int, ...] | None = None) -> tuple[Callable, Callable]:
    def to_ours(ws):
        return ws[0] if shape is None else ws[0].reshape(shape)

    def to_hf(w):
        return [w.reshape(-1) if shape is not None else w]

    return to_ours, to_hf


def _split_rows(sizes: list[int], shapes: list[tuple[int, ...]]) -> list[tuple[Callable, Callable]]:
    """One fused HF Linear [sum(sizes), in] feeding several of our parameters."""
    offsets = np.cumsum([0] + sizes)
    rules = []
    for i, shape in enumerate(shapes):

        def to_ours(ws, i=i, shape=shape):
            rows = ws[0][offsets[i] : offsets[i + 1]]
            if rows.shape[0] != sizes[i]:
                raise ValueError("fused tensor too small")
            return rows.T.reshape(ws[0].shape[1], *shape)

        rules.append((to_ours, None))
    return rules


def hf_tensor_rules(config: ModelConfig) -> list[Rule]:
    c = config
    rules: list[Rule] = []
    hd = c.head_dim
    if c.architecture in ("llama", "qwen2"):
        rules.append((("embed",), ["model.embed_tokens.weight"], *_same()))
        rules.append((("final_norm", "scale"), ["model.norm.weight"], *_same()))
        if not c.tie_embeddings:
            rules.append((("lm_head",), ["lm_head.weight"], *_linear(())))
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            h, kh = c.num_heads[i], c.num_kv_heads[i]
            L = ("layers", i)
            rules += [
                (L + ("attn_norm", "scale"), [p + "input_layernorm.weight"], *_same()),
                (L + ("mlp_norm", "scale"), [p + "post_attention_layernorm.weight"], *_same()),
                (L + ("attn", "q"), [p + "self_attn.q_proj.weight"], *_linear((h, hd))),
                (L + ("attn", "k"), [p + "self_attn.k_proj.weight"], *_linear((kh, hd))),
                (L + ("attn", "v"), [p + "self_attn.v_proj.weight"], *_linear((kh, hd))),
                (L + ("attn", "o"), [p + "self_attn.o_proj.weight"], *_linear_in((h, hd))),
                (L + ("mlp", "gate"), [p + "mlp.gate_proj.weight"], *_linear(())),
                (L + ("mlp", "up"), [p + "mlp.up_proj.weight"], *_linear(())),
                (L + ("mlp", "down"), [p + "mlp.down_proj.weight"], *_linear(())),
            ]
            if c.qkv_bias:
                for name, heads in (("q", h), ("k", kh), ("v", kh)):
                    hf = [p + f"self_attn.{name}_proj.bias"]
                    rules.append((L + ("attn", name + "_bias"), hf, *_same((heads, hd))))
            if c.qk_norm:
                for name in ("q", "k"):
                    hf = [p + f"self_attn.{name}_norm.weight"]
                    rules.append((L + ("attn", name + "_norm", "scale"), hf, *_same()))
        return rules
    if c.architecture == "openelm":
        rules.append((("embed",), ["transformer.token_embeddings.weight"], *_same()))
        rules.append((("final_norm", "scale"), ["transformer.norm.weight"], *_same()))
        if not c.tie_embeddings:
            rules.append((("lm_head",), ["lm_head.weight"], *_linear(())))
        for i in range(c.num_layers):
            p = f"transformer.layers.{i}."
            h, kh, f = c.num_heads[i], c.num_kv_heads[i], c.ffn_dim[i]
            L = ("layers", i)
            qkv = _split_rows([h * hd, kh * hd, kh * hd], [(h, hd), (kh, hd), (kh, hd)])
            ffn = _split_rows([f, f], [(f,), (f,)])
            rules += [
                (L + ("attn_norm", "scale"), [p + "attn_norm.weight"], *_same()),
                (L + ("mlp_norm", "scale"), [p + "ffn_norm.weight"], *_same()),
                (L + ("attn", "q"), [p + "attn.qkv_proj.weight"], *qkv[0]),
                (L + ("attn", "k"), [p + "attn.qkv_proj.weight"], *qkv[1]),
                (L + ("attn", "v"), [p + "attn.qkv_proj.weight"], *qkv[2]),
                (L + ("attn", "o"), [p + "attn.out_proj.weight"], *_linear_in((h, hd))),
                (L + ("attn", "q_norm", "scale"), [p + "attn.q_norm.weight"], *_same()),
                (L + ("attn", "k_norm", "scale"), [p + "attn.k_norm.weight"], *_same()),
                (L + ("mlp", "gate"), [p + "ffn.proj_1.weight"], ffn[0][0], None),
                (L + ("mlp", "up"), [p + "ffn.proj_1.weight"], ffn[1][0], None),
                (L + ("mlp", "down"), [p + "ffn.proj_2.weight"], *_linear(())),
            ]
        return rules
    raise ValueError(f"no weight naming for architecture {c.architecture!r}")


class _TensorIndex:
    """Name -> file for a checkpoint of one or many safetensors files."""

    def __init__(self, path: str):
        index_files = glob.glob(os.path.join(path, "*.safetensors.index.json"))
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{path!r} has no *.safetensors files")
        self.where: dict[str, str] = {}
        if index_files:
            try:
                with open(index_files[0], encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                weight_map = dict(weight_map)
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
                raise CheckpointError(
                    f"{index_files[0]}: not a safetensors index (needs a 'weight_map'; {e})"
                ) from None
            for name, fname in weight_map.items():
                full = os.path.join(path, fname)
                if not os.path.isfile(full):
                    raise FileNotFoundError(
                        f"{index_files[0]} maps {name!r} to {fname!r}, which does not exist"
                    )
                self.where[name] = full
        else:
            for fname in files:
                for name in safetensors_io.SafetensorsFile(fname).keys():
                    self.where[name] = fname
        self._open: dict[str, safetensors_io.SafetensorsFile] = {}
        self.path = path

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise CheckpointError(f"checkpoint {self.path!r} is missing tensor {name!r}")
        fname = self.where[name]
        if fname not in self._open:
            self._open[fname] = safetensors_io.SafetensorsFile(fname)
        f = self._open[fname]
        if name not in f.header:
            raise CheckpointError(f"{fname} is missing tensor {name!r} (named in the index)")
        return f.get(name)


def load_hf(
    path: str | os.PathLike,
    config: ModelConfig | None = None,
    shardings: dict | None = None,
) -> Decoder:
    """Load a local HF-format Llama / Qwen2 / OpenELM checkpoint into a `Decoder`.

    `shardings` maps our parameter paths (tuples) to a `jax.sharding.Sharding`; parameters are
    placed one by one, so a sharded model never sits whole on one device.
    """
    path = os.fspath(path)
    config = config or from_hf_config(path)
    index = _TensorIndex(path)
    model = abstract_model(config)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    for ours, hf_names, to_ours, _ in hf_tensor_rules(config):
        arrays = [index.get(n) for n in hf_names]
        try:
            value = to_ours(arrays)
        except ValueError:
            value = None
        target = flat[ours]
        if value is None or tuple(value.shape) != tuple(target.shape):
            shapes = ", ".join(f"{n}: {tuple(a.shape)}" for n, a in zip(hf_names, arrays))
            raise CheckpointError(
                f"{path}: tensor {hf_names[0]!r} has the wrong shape for "
                f"{'.'.join(map(str, ours))} "
                f"(expected {tuple(target.shape)} in our layout; checkpoint has {shapes})"
            )
        value = np.asarray(value).astype(target.dtype)
        sharding = (shardings or {}).get(ours)
        target.set_value(jax.device_put(value, sharding) if sharding else jax.numpy.asarray(value))
    missing = [k for k, v in flat.items() if isinstance(v[...], jax.ShapeDtypeStruct)]
    if missing:
        raise CheckpointError(f"{path}: no checkpoint tensor feeds parameters {missing}")
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_hf(model: Decoder, path: str | os.PathLike, max_file_bytes: int | None = None) -> None:
    """Write a Llama / Qwen2 model as an HF-format directory (config.json + safetensors)."""
    config = model.config
    if config.architecture not in ("llama", "qwen2"):
        raise ValueError(f"saving {config.architecture!r} checkpoints is not supported")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors: dict[str, np.ndarray] = {}
    for ours, hf_names, _, to_hf in hf_tensor_rules(config):
        for name, arr in zip(hf_names, to_hf(np.asarray(flat[ours][...]))):
            tensors[name] = arr
    files: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors.items():
        if max_file_bytes and size + arr.nbytes > max_file_bytes and files[-1]:
            files.append({})
            size = 0
        files[-1][name] = arr
        size += arr.nbytes
    if len(files) == 1:
        safetensors_io.save_file(files[0], os.path.join(path, "model.safetensors"))
    else:
        weight_map = {}
        for i, part in enumerate(files):
            fname = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            safetensors_io.save_file(part, os.path.join(path, fname))
            weight_map.update({n: fname for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(to_hf_config(config), f, indent=1)


def to_hf_config(config: ModelConfig) -> dict:
    c = config
    if len(set(c.num_heads)) > 1 or len(set(c.num_kv_heads)) > 1 or len(set(c.ffn_dim)) > 1:
        raise ValueError("HF Llama/Qwen2 configs need the same shapes in every layer")
    out = {
        "architectures": ["Qwen2ForCausalLM" if c.architecture == "qwen2" else "LlamaForCausalLM"],
        "model_type": c.architecture,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads[0],
        "num_key_value_heads": c.num_kv_heads[0],
        "head_dim": c.head_dim,
        "intermediate_size": c.ffn_dim[0],
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_embeddings,
        "max_position_embeddings": c.max_seq_len,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": c.param_dtype,
        "hidden_act": "silu",
    }
    if c.architecture == "llama":
        out["attention_bias"] = c.qkv_bias
    if c.rope_scaling is not None:
        rs = c.rope_scaling
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position_embeddings,
        }
    return out
