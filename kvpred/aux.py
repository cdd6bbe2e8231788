"""Auxiliary models: the small model whose cache KV prediction projects into the base's.

    lp:0.25 | lp:0.5 | lp:0.75   the base with layers removed, initialised from its weights
    c:PRESET | c:DIR             a separate smaller model (a preset, with the trained weights
                                 the package ships for it, e.g. tiny-aux, else at random init;
                                 or a checkpoint: HF safetensors or a jaxserve/orbax directory)

`build_aux(spec, base)` returns the model, its kind and the layer map (which auxiliary layer
predicts each base layer: the LP rule or the front-loaded C rule, or an explicit list).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from absl import logging
from flax import nnx

from jaxserve.config import PRESETS, ModelConfig
from jaxserve.models.transformer import Decoder, init_model
from kvpred.layer_map import (
    LP_FRACTIONS,
    c_layer_map,
    check_layer_map,
    lp_kept_layers,
    lp_layer_map,
)


@dataclasses.dataclass
class Aux:
    model: Decoder
    kind: str  # "lp" or "c"
    spec: str  # as given, e.g. "lp:0.5"
    layer_map: list[int]  # base layer i -> auxiliary layer
    kept_layers: list[int] | None = None  # LP: the base layers kept


def lp_config(base: ModelConfig, fraction: float) -> ModelConfig:
    kept = lp_kept_layers(base.num_layers, fraction)
    return base.replace(
        name=f"{base.name}-lp{fraction:g}",
        num_layers=len(kept),
        num_heads=tuple(base.num_heads[i] for i in kept),
        num_kv_heads=tuple(base.num_kv_heads[i] for i in kept),
        ffn_dim=tuple(base.ffn_dim[i] for i in kept),
    )


def make_lp(base: Decoder, fraction: float) -> tuple[Decoder, list[int]]:
    """A copy of `base` keeping `fraction` of its layers (its own weights, not shared)."""
    kept = lp_kept_layers(base.config.num_layers, fraction)
    aux = nnx.clone(base)
    aux.layers = nnx.List([aux.layers[i] for i in kept])
    aux.config = lp_config(base.config, fraction)
    return aux, kept


def parse_aux_spec(spec: str) -> tuple[str, str]:
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in ("lp", "c") or not arg:
        raise ValueError(
            f"auxiliary model {spec!r} is not lp:FRACTION ({', '.join(map(str, LP_FRACTIONS))}),"
            " c:PRESET or c:DIR"
        )
    return kind, arg


def check_aux_spec(spec: str, base: ModelConfig, layer_map: Sequence[int] | None = None) -> None:
    """What `build_aux` would refuse, found from configs alone (no weights loaded): an LP
    fraction that is not one of LP_FRACTIONS, a C model that is neither a preset nor a
    readable checkpoint, another vocabulary, more layers than the base, a bad layer map."""
    kind, arg = parse_aux_spec(spec)
    nb = base.num_layers
    if kind == "lp":
        try:
            fraction = float(arg)
        except ValueError:
            fraction = None
        if fraction not in LP_FRACTIONS:
            raise ValueError(
                f"auxiliary model {spec!r}: the LP fraction must be one of "
                f"{', '.join(map(str, LP_FRACTIONS))}"
            )
        if layer_map is not None:
            check_layer_map(layer_map, nb, len(lp_kept_layers(nb, fraction)))
        return
    if arg in PRESETS:
        cfg = PRESETS[arg]
    elif os.path.isdir(arg):
        from jaxserve.models.checkpoint import read_config

        cfg = read_config(arg)
    else:
        raise ValueError(
            f"auxiliary model {spec!r}: {arg!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor a directory"
        )
    check_compatible(base, cfg, f"auxiliary model {spec!r}")
    if cfg.num_layers > nb:
        raise ValueError(
            f"auxiliary model {spec!r} has {cfg.num_layers} layers, more than the base's {nb}"
        )
    if layer_map is not None:
        check_layer_map(layer_map, nb, cfg.num_layers)


def check_compatible(base: ModelConfig, aux: ModelConfig, what: str) -> None:
    """A C auxiliary model reads the same tokens as the base: same vocabulary."""
    if aux.vocab_size != base.vocab_size:
        raise ValueError(
            f"{what}: vocabulary of {aux.vocab_size} tokens, the base has {base.vocab_size}; "
            "the auxiliary model must share the base's tokenizer"
        )


def build_aux(
    spec: str, base: Decoder, layer_map: Sequence[int] | None = None, seed: int = 0
) -> Aux:
    """Build the auxiliary model named by `spec` for `base` (see the module docstring)."""
    kind, arg = parse_aux_spec(spec)
    nb = base.config.num_layers
    if kind == "lp":
        try:
            fraction = float(arg)
        except ValueError:
            raise ValueError(f"auxiliary model {spec!r}: {arg!r} is not a fraction") from None
        model, kept = make_lp(base, fraction)
        default_map = lp_layer_map(nb, fraction)
    else:
        kept = None
        if arg in PRESETS:
            from jaxserve.experiment import embedded_checkpoint
            from jaxserve.models.checkpoint import load_model

            cfg = PRESETS[arg]
            check_compatible(base.config, cfg, f"auxiliary preset {arg!r}")
            shipped = embedded_checkpoint(arg)  # trained weights the package ships, if any
            model = load_model(shipped) if shipped else init_model(cfg, seed)
            if not shipped:
                logging.warning(
                    "auxiliary preset %r has no shipped weights: it starts from a random "
                    "init; train it first (experiments.train_lm) and pass c:DIR",
                    arg,
                )
        elif os.path.isdir(arg):
            from jaxserve.models.checkpoint import load_model

            model = load_model(arg)
            check_compatible(base.config, model.config, f"auxiliary checkpoint {arg}")
        else:
            raise ValueError(
                f"auxiliary model {spec!r}: {arg!r} is neither a preset "
                f"({', '.join(PRESETS)}) nor a directory"
            )
        if model.config.num_layers > nb:
            raise ValueError(
                f"auxiliary model {spec!r} has {model.config.num_layers} layers, more than "
                f"the base's {nb}"
            )
        default_map = c_layer_map(nb, model.config.num_layers)
    lmap = (
        check_layer_map(layer_map, nb, model.config.num_layers)
        if layer_map is not None
        else default_map
    )
    return Aux(model=model, kind=kind, spec=spec, layer_map=lmap, kept_layers=kept)
