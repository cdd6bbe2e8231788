"""The `experiments.eval_kvpred` job: variants x task -> accuracy, TTFT FLOPs, TTFT, Pareto plot.

Variants (comma-separated):
    base                    the base model
    aux_only:SPEC           a small model alone (SPEC: checkpoint directory or preset)
    lp_baseline:X           the base with layers removed, no KV prediction (X: 0.25 / 0.5 /
                            0.75 pruned as is, or a checkpoint directory of a tuned one)
    kvp:CKPT                KV prediction from a checkpoint of `experiments.train_kvpred`
    kvp_identity            A = B with an identity predictor: must reproduce the base exactly
Tasks: any registered in `kvpred.tasks` (synthetic_qa | triviaqa:PATH | humaneval).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flax import nnx

from jaxserve.models.checkpoint import load_model
from jaxserve.models.transformer import Decoder
from jaxserve.tokenizer import Tokenizer
from kvpred import evaluate as ev
from kvpred import flops
from kvpred.aux import make_lp
from kvpred.io import load_base, load_kvp
from kvpred.layer_map import LP_FRACTIONS
from kvpred.model import KVPModel
from kvpred.predictor import KVPredictor
from kvpred.tasks.registry import Task

VARIANT_KINDS = ("base", "aux_only", "lp_baseline", "kvp", "kvp_identity")


@dataclasses.dataclass
class Variant:
    name: str
    kind: str
    model: Any  # Decoder or KVPModel
    flops_params: int = 0
    flops_attention: int = 0
    memory_bytes: dict[str, int] = dataclasses.field(default_factory=dict)


def parse_variants(spec: str) -> list[tuple[str, str, str]]:
    """'base,kvp:DIR' -> [(name, kind, arg)]. Raises ValueError naming a bad entry."""
    out = []
    for name in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, arg = name.partition(":")
        if kind not in VARIANT_KINDS:
            raise ValueError(f"unknown variant {name!r}; kinds are {', '.join(VARIANT_KINDS)}")
        needs_arg = kind in ("aux_only", "lp_baseline", "kvp")
        if needs_arg and not arg:
            raise ValueError(f"variant {name!r} needs an argument ({kind}:...)")
        if not needs_arg and arg:
            raise ValueError(f"variant {name!r} takes no argument")
        if kind == "kvp" and not os.path.isdir(arg):
            raise ValueError(f"variant {name!r}: checkpoint directory {arg!r} does not exist")
        if kind == "lp_baseline" and not os.path.isdir(arg):
            try:
                frac = float(arg)
            except ValueError:
                frac = None
            if frac not in LP_FRACTIONS:
                raise ValueError(
                    f"variant {name!r}: {arg!r} is neither a fraction in {LP_FRACTIONS} nor a "
                    "checkpoint directory"
                )
        out.append((name, kind, arg))
    if not out:
        raise ValueError("no variants given")
    if len({n for n, _, _ in out}) != len(out):
        raise ValueError(f"variant names repeat in {spec!r}")
    return out


def _bytes(module: nnx.Module) -> int:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def build_variant(name: str, kind: str, arg: str, base: Decoder, n: int) -> Variant:
    """`n`: the prompt length the FLOPs are counted for."""
    if kind == "base":
        model = base
    elif kind == "aux_only":
        model = load_base(arg)
    elif kind == "lp_baseline":
        model = load_model(arg) if os.path.isdir(arg) else make_lp(base, float(arg))[0]
    elif kind == "kvp":
        model = load_kvp(arg, base)
    else:  # kvp_identity
        ident = list(range(base.config.num_layers))
        pred = KVPredictor(base.config, base.config, ident, rngs=nnx.Rngs(0))
        model = KVPModel(base, nnx.clone(base), pred)
    if model.config.vocab_size != base.config.vocab_size:
        raise ValueError(f"variant {name!r}: its vocabulary differs from the base's")
    v = Variant(name, kind, model)
    for k in flops.KINDS:
        setattr(v, f"flops_{k}", prefill_flops(v, base, n, k))
    if isinstance(model, KVPModel):
        v.memory_bytes = {"aux": _bytes(model.aux), "predictor": _bytes(model.predictor)}
    else:
        v.memory_bytes = {"model": _bytes(model)}
    return v


def prefill_flops(v: Variant, base: Decoder, n: int, kind: str) -> int:
    """A variant's TTFT FLOPs for one prompt of `n` tokens (`flops.KINDS`)."""
    if isinstance(v.model, KVPModel):
        p = v.model.predictor.num_params()
        return flops.kvp_prefill_flops(base.config, v.model.aux.config, p, n, kind)
    return flops.prefill_flops(v.model.config, n, kind)


def mean_flops(v: Variant, base: Decoder, lengths: list[int], kind: str) -> float:
    """A variant's TTFT FLOPs averaged over prompts of these lengths (a task's real ones)."""
    by_len = {n: prefill_flops(v, base, n, kind) for n in set(lengths)}
    return sum(by_len[n] for n in lengths) / len(lengths)


def run_task(
    variant: Variant, task: Task, tokenizer: Tokenizer, task_data: Any
) -> tuple[float, str, list[dict]]:
    """(metric value, metric name, per-example records)."""
    metric, records = ev.run_task(variant.model, tokenizer, task, task_data)
    return metric, task.metric, records


def format_table(results: dict[str, dict]) -> str:
    lines = [
        f"{'variant':<40} {'metric':>8} {'FLOPs red.':>10} {'attn red.':>9} "
        f"{'TTFT ms':>9} {'speedup':>8} {'meas/FLOPs':>10}"
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<40} {r[r['metric']]:>8.4f} {r['ttft_flops_reduction']:>9.2f}x "
            f"{r['ttft_flops_attention_reduction']:>8.2f}x {1e3 * r['ttft_seconds']:>9.2f} "
            f"{r['ttft_speedup']:>7.2f}x {r['ttft_speedup'] / r['ttft_flops_reduction']:>10.2f}"
        )
    return "\n".join(lines)


def short_labels(names: list[str]) -> dict[str, str]:
    """Plot labels for variant names: checkpoint paths lose the directories every path shares
    and `final` components ("aux_only:runs/kb/lm_aux/final" -> "aux_only:lm_aux")."""
    split = {}
    for name in names:
        kind, _, arg = name.partition(":")
        parts = [p for p in arg.split("/") if p not in ("", ".", "final")] if "/" in arg else []
        split[name] = (kind, parts)
    paths = [parts for _, parts in split.values() if parts]
    common = 0
    while (
        paths and all(len(p) > common + 1 for p in paths) and len({p[common] for p in paths}) == 1
    ):
        common += 1
    return {
        name: f"{kind}:{'/'.join(parts[common:])}" if parts else name
        for name, (kind, parts) in split.items()
    }


def pareto_plot(results: dict[str, dict], path: str, task: str) -> str:
    """Task metric against TTFT FLOPs reduction (left) and measured TTFT speedup (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {
        "base": "k",
        "aux_only": "tab:orange",
        "lp_baseline": "tab:green",
        "kvp": "tab:blue",
        "kvp_identity": "tab:gray",
    }
    labels = short_labels(list(results))
    for ax, key, label in (
        (axes[0], "ttft_flops_reduction", "TTFT FLOPs reduction vs base (x)"),
        (axes[1], "ttft_speedup", "measured TTFT speedup vs base (x)"),
    ):
        for name, r in results.items():
            ax.scatter(r[key], r[r["metric"]], color=colors[r["kind"]], s=40)
            ax.annotate(
                labels[name],
                (r[key], r[r["metric"]]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(label)
        ax.set_ylabel(next(iter(results.values()))["metric"])
        ax.set_title(f"{task}: accuracy against TTFT")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
