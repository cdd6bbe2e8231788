"""Which auxiliary layer's cache predicts each base layer's cache.

Two kinds of auxiliary model (KV Prediction, Horton et al. 2024):
  * LP: the base with layers removed (keep 1/4, 1/2 or 3/4 of them), initialised from the base.
    `lp_kept_layers` names the kept base layers; base layer i is predicted from the last kept
    layer <= i (layer 0 is always kept, so every base layer has one).
  * C: a separate smaller model. Each of its nA layers serves floor(nB / nA) consecutive base
    layers, and the first (nB mod nA) of them one more (front-loaded).
An explicit list overrides either rule: entry i is the auxiliary layer for base layer i.
"""

from __future__ import annotations

from collections.abc import Sequence

LP_FRACTIONS = (0.25, 0.5, 0.75)


def lp_kept_layers(num_base_layers: int, fraction: float) -> list[int]:
    """Base layers an LP auxiliary model keeps: every 4th, every 2nd, or all but every 4th."""
    if fraction not in LP_FRACTIONS:
        raise ValueError(f"LP keeps a fraction in {LP_FRACTIONS} of the layers, not {fraction}")
    if fraction == 0.75:
        return [i for i in range(num_base_layers) if i % 4 != 3]
    step = 4 if fraction == 0.25 else 2
    return list(range(0, num_base_layers, step))


def lp_layer_map(num_base_layers: int, fraction: float) -> list[int]:
    """Base layer i -> index (in the auxiliary model) of the last kept layer <= i."""
    kept = lp_kept_layers(num_base_layers, fraction)
    out, j = [], -1
    for i in range(num_base_layers):
        while j + 1 < len(kept) and kept[j + 1] <= i:
            j += 1
        out.append(j)
    return out


def c_layer_map(num_base_layers: int, num_aux_layers: int) -> list[int]:
    """Front-loaded map for a separate auxiliary model of `num_aux_layers` layers."""
    if not 1 <= num_aux_layers <= num_base_layers:
        raise ValueError(
            f"an auxiliary model needs 1..{num_base_layers} layers, not {num_aux_layers}"
        )
    per, extra = divmod(num_base_layers, num_aux_layers)
    out = []
    for j in range(num_aux_layers):
        out += [j] * (per + (1 if j < extra else 0))
    return out


def check_layer_map(layer_map: Sequence[int], num_base_layers: int, num_aux_layers: int):
    """Validate an explicit map; returns it as a list."""
    layer_map = [int(j) for j in layer_map]
    if len(layer_map) != num_base_layers:
        raise ValueError(
            f"layer map has {len(layer_map)} entries for {num_base_layers} base layers"
        )
    bad = [j for j in layer_map if not 0 <= j < num_aux_layers]
    if bad:
        raise ValueError(f"layer map names auxiliary layers {bad}; it has {num_aux_layers}")
    return layer_map
