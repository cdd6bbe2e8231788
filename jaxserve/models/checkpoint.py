"""Native checkpoints (orbax) of a `Decoder`, and `load_model` for either checkpoint kind.

    directory/jaxserve_config.json   {"format_version", "step", "config": ModelConfig.to_dict()}
    directory/params[_<step>]/       the nnx.Param state, written by orbax (bit-exact)

The config file is written last, so its presence marks a complete checkpoint; it records the
step of the latest save, which is what `restore_checkpoint` restores unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from jaxserve.config import ModelConfig, RopeScaling, from_hf_config
from jaxserve.errors import CheckpointError
from jaxserve.models.transformer import Decoder, abstract_model
from jaxserve.models.weights import load_hf

CONFIG_FILE = "jaxserve_config.json"
FORMAT_VERSION = 1


def config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """Inverse of `ModelConfig.to_dict()` (after a JSON round trip: tuples come back as lists)."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {unknown}")
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return ModelConfig(**d)


def _params_dir(directory: str, step: int | None) -> str:
    return os.path.join(directory, "params" if step is None else f"params_{step}")


def save_checkpoint(model: Decoder, directory: str | os.PathLike, step: int | None = None) -> str:
    """Write the model's config and parameters under `directory`; returns the params path."""
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    target = _params_dir(directory, step)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, nnx.state(model, nnx.Param), force=True)
        ckptr.wait_until_finished()
    if jax.process_index() != 0:  # several processes: orbax wrote the shards; one writes meta
        return target
    meta = {"format_version": FORMAT_VERSION, "step": step, "config": model.config.to_dict()}
    tmp = os.path.join(directory, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(directory, CONFIG_FILE))
    return target


def _read_meta(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"format_version {meta['format_version']} is newer than this code")
        meta["config"] = config_from_dict(meta["config"])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a valid jaxserve checkpoint config ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad jaxserve checkpoint config: {e}") from None
    return meta


def _flat_shardings(shardings: Any) -> dict[tuple, jax.sharding.Sharding]:
    """{path tuple: Sharding} from a flat dict, a nested dict, or an nnx.State of shardings."""
    if isinstance(shardings, nnx.State):
        return {
            p: v.get_value() if isinstance(v, nnx.Variable) else v
            for p, v in nnx.to_flat_state(shardings)
        }
    if all(isinstance(k, tuple) for k in shardings):
        return dict(shardings)
    return traverse_util.flatten_dict(shardings)


def restore_checkpoint(
    directory: str | os.PathLike, shardings: Any = None, step: int | None = None
) -> Decoder:
    """Rebuild a `Decoder` saved by `save_checkpoint`.

    `shardings`: None (default device), or `jax.sharding.Sharding`s keyed like the param state
    (flat {path tuple: sharding}, nested dict, or an nnx.State); parameters it does not name
    go to the default device. `step`: which save to restore (default: the latest).
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
    meta = _read_meta(directory)
    params = _params_dir(directory, meta.get("step") if step is None else step)
    if not os.path.isdir(params):
        raise FileNotFoundError(f"checkpoint {directory!r} has no parameters at {params!r}")
    model = abstract_model(meta["config"])
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    wanted = _flat_shardings(shardings) if shardings is not None else {}
    unknown = sorted(map(str, set(wanted) - set(flat)))
    if unknown:
        raise ValueError(f"shardings name parameters the model does not have: {unknown}")
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for path, var in flat.items():
        sds = var.get_value()
        var.set_value(
            jax.ShapeDtypeStruct(sds.shape, sds.dtype, sharding=wanted.get(path, default))
        )
    restored = restore_orbax(params, nnx.from_flat_state(flat))
    return nnx.merge(graphdef, restored)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened (tensorstore errors run long)."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


def restore_orbax(path: str, abstract: Any) -> Any:
    """orbax StandardCheckpointer.restore, with a damaged or incomplete save reported as a
    `CheckpointError` naming the directory (not pages of tensorstore errors)."""
    quiet_failed_read_noise()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path, abstract)
    except (FileNotFoundError, CheckpointError):
        raise
    except Exception as e:  # orbax/tensorstore raise many kinds for damaged data
        raise CheckpointError(
            f"{path}: cannot be read ({type(e).__name__}: {first_line(e)})"
        ) from e


def quiet_failed_read_noise() -> None:
    """When an orbax read fails, its reads still in flight finish on a closed event loop and
    report "RuntimeError: Event loop is closed" through sys.unraisablehook, one traceback each
    (some before the failure reaches the caller); drop those (the read's own error is what
    matters), pass anything else on. Installed once, before the first read."""
    if getattr(sys.unraisablehook, "_drops_closed_loop", False):
        return
    previous = sys.unraisablehook

    def hook(u):
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The config of a checkpoint directory of either kind, without loading its weights (to
    check inputs before any work); the same errors as `load_model` for what it reads."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        meta = _read_meta(path)
        params = _params_dir(path, meta.get("step"))
        if not os.path.isdir(params):
            raise CheckpointError(f"checkpoint {path!r} has no parameters at {params!r}")
        return meta["config"]
    has_st = any(name.endswith(".safetensors") for name in os.listdir(path))
    if os.path.isfile(os.path.join(path, "config.json")) and has_st:
        return from_hf_config(path)
    raise FileNotFoundError(
        f"{path!r} is not a model checkpoint: looked for {CONFIG_FILE} (jaxserve/orbax) or "
        "config.json with *.safetensors (Hugging Face)"
    )


def load_model(path: str | os.PathLike, shardings: Any = None) -> Decoder:
    """A native checkpoint (jaxserve_config.json) or an HF one (config.json + safetensors)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return restore_checkpoint(path, shardings)
    has_st = any(name.endswith(".safetensors") for name in os.listdir(path))
    if os.path.isfile(os.path.join(path, "config.json")) and has_st:
        return load_hf(path, shardings=_flat_shardings(shardings) if shardings else None)
    raise FileNotFoundError(
        f"{path!r} is not a model checkpoint: looked for {CONFIG_FILE} (jaxserve/orbax) or "
        "config.json with *.safetensors (Hugging Face)"
    )
