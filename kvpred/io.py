"""KV Prediction checkpoints: the auxiliary model and predictor, and where the base came from.

    DIR/kvp_config.json   format version, base (preset name or directory) and its config,
                          auxiliary spec, kind and layer map, LP kept layers, training step
    DIR/aux/              the auxiliary model (a jaxserve checkpoint, loadable on its own)
    DIR/predictor/        the predictor's parameters (orbax)

The base is not copied: it is frozen, and `load_kvp` reloads it from the recorded source (or
takes the caller's), refusing one whose config differs from the one the predictor was trained on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxserve.config import PRESETS
from jaxserve.errors import CheckpointError, InputError
from jaxserve.models.checkpoint import (
    config_from_dict,
    load_model,
    restore_orbax,
    save_checkpoint,
)
from jaxserve.models.transformer import Decoder
from jaxserve.utils import write_json
from kvpred.model import KVPModel
from kvpred.predictor import KVPredictor

CONFIG_FILE = "kvp_config.json"
FORMAT_VERSION = 1


def save_kvp(model: KVPModel, directory: str, *, base_source: str, meta: dict[str, Any]) -> str:
    """meta: aux_spec, aux_kind, kept_layers, step (anything JSON)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    save_checkpoint(model.aux, os.path.join(directory, "aux"))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(
            os.path.join(directory, "predictor"),
            nnx.state(model.predictor, nnx.Param),
            force=True,
        )
        ckptr.wait_until_finished()
    payload = dict(meta)
    payload.update(
        format_version=FORMAT_VERSION,
        base=base_source,
        base_config=model.base.config.to_dict(),
        layer_map=list(model.predictor.layer_map),
    )
    if jax.process_index() == 0:  # several processes: orbax wrote the shards; one writes meta
        write_json(os.path.join(directory, CONFIG_FILE), payload)
    return directory


def read_kvp_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"KV prediction checkpoint {directory!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory!r} is not a KV prediction checkpoint (no {CONFIG_FILE})"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta['format_version']} is newer than this code"
        )
    missing = [k for k in ("base", "base_config", "layer_map") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {missing}")
    return meta


def load_base(source: str, seed: int = 0) -> Decoder:
    """A base model from a preset name (its embedded trained weights where the package ships
    them, else random ones) or a checkpoint directory."""
    if source in PRESETS:
        from jaxserve.experiment import resolve_model

        return resolve_model(None, source, seed)[0]
    if os.path.isdir(source):
        return load_model(source)
    raise InputError(f"base {source!r} is neither a preset ({', '.join(PRESETS)}) nor a directory")


def tokenizer_for(source: str | None):
    """The tokenizer of a model source: the checkpoint directory's own (an HF checkpoint's
    tokenizer.json, ...), else the embedded default that the presets and native checkpoints
    trained here use."""
    from jaxserve.tokenizer import load_default, load_tokenizer

    if source and os.path.isdir(source):
        try:
            return load_tokenizer(source)
        except FileNotFoundError:
            pass
    return load_default()


def load_kvp(directory: str, base: Decoder | None = None) -> KVPModel:
    meta = read_kvp_config(directory)
    try:
        want = config_from_dict(meta["base_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/{CONFIG_FILE}: bad base_config ({e})") from None
    if base is None:
        base = load_base(meta["base"])
    if base.config != want:
        diff = sorted(k for k, v in want.to_dict().items() if base.config.to_dict().get(k) != v)
        raise InputError(
            f"{directory}: the predictor was trained for base {meta['base']!r}; the base given "
            f"differs in {diff}"
        )
    aux = load_model(os.path.join(directory, "aux"))
    pred = KVPredictor(aux.config, base.config, meta["layer_map"], rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(pred)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = restore_orbax(os.path.join(os.path.abspath(directory), "predictor"), abstract)
    pred = nnx.merge(graphdef, restored)
    return KVPModel(base, aux, pred)
