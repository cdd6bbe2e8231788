"""What every experiment entry point shares: model resolution, environment record, JSON out
(the last two live in `jaxserve.utils` and are re-exported here).

Each experiment writes its flags, its environment and its results to one JSON file, so any
figure can be traced back to the run (model, data, device) that made it.
"""

from __future__ import annotations

import os

import jax

from jaxserve import config as cfg
from jaxserve.models.transformer import Decoder, init_model
from jaxserve.tokenizer import Tokenizer, load_default, load_tokenizer
from jaxserve.utils import environment, write_json

__all__ = ["embedded_checkpoint", "environment", "resolve_model", "write_json"]


def embedded_checkpoint(preset: str) -> str | None:
    """The directory of a preset's trained weights shipped in the package, if there are any
    (`experiments.train_lm` made them; see the README)."""
    import importlib.resources

    path = importlib.resources.files("jaxserve") / "assets" / "models" / preset
    return str(path) if path.is_dir() and (path / "config.json").is_file() else None


def resolve_model(
    checkpoint: str | None,
    preset: str | None,
    seed: int = 0,
    dtype: str | None = None,
    random_weights: bool = False,
) -> tuple[Decoder, Tokenizer | None, str]:
    """A model from a checkpoint directory (HF or ours) or a preset: its embedded trained
    weights where the package ships them (and `random_weights` is not set), else random ones.

    Returns (model, tokenizer or None, a description of where the weights came from).
    """
    from jaxserve.models.checkpoint import load_model

    if (checkpoint is None) == (preset is None):
        raise ValueError("give exactly one of a checkpoint directory or a preset")
    if checkpoint is not None:
        model = load_model(checkpoint)
        try:
            tokenizer = load_tokenizer(checkpoint)
        except FileNotFoundError:
            # our own checkpoints use the embedded tokenizer; a foreign one without
            # tokenizer files takes token ids only
            ours = os.path.isfile(os.path.join(checkpoint, "jaxserve_config.json"))
            tokenizer = load_default() if ours else None
        return model, tokenizer, f"checkpoint {os.path.abspath(checkpoint)}"
    config = cfg.get_preset(preset)
    embedded = None if random_weights else embedded_checkpoint(preset)
    if embedded is not None:
        model = load_model(embedded)
        if dtype:
            model = _cast(model, dtype)
        return model, load_default(), f"preset {preset} (embedded trained weights)"
    if dtype:
        config = config.replace(dtype=dtype, param_dtype=dtype)
    return (
        init_model(config, seed),
        load_default(),
        f"preset {preset} (random weights, seed {seed})",
    )


def _cast(model: Decoder, dtype: str) -> Decoder:
    """The same weights in another compute and parameter dtype."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxserve.models.transformer import abstract_model

    new = abstract_model(model.config.replace(dtype=dtype, param_dtype=dtype))
    state = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), nnx.state(model, nnx.Param))
    nnx.update(new, state)
    return new


def check_output_dir(path: str, what: str = "--out") -> str:
    """Create `path` if needed and check a file can be written in it, before any work is
    done; `InputError` naming `what` (the flag) otherwise. Leaves nothing behind."""
    import tempfile

    from jaxserve.errors import InputError

    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(20, "a file is in the way")
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check"):
            pass
    except OSError as e:
        raise InputError(f"{what}={path}: cannot write there ({e.strerror or e})") from None
    return path


def check_output_file(path: str, what: str) -> str:
    """Check that the file `path` can be written (its directory created if needed) before any
    work is done; `InputError` naming `what` otherwise. Leaves nothing behind."""
    from jaxserve.errors import InputError

    if os.path.isdir(path):
        raise InputError(f"{what}={path}: is a directory, not a file")
    try:
        check_output_dir(os.path.dirname(os.path.abspath(path)), what)
    except InputError as e:
        raise InputError(
            f"{what}={path}: cannot write there ({str(e).split(' (', 1)[-1]}"
        ) from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"{what}={path}: the file is not writable")
    return path
