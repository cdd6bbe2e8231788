"""Figures for scheduling experiments, as PNG files.

    {scheduler: [RequestRecord]}         -> latency_cdfs -> JCT and TTFT CDFs, one line each
    {scheduler: [(rate, summary dict)]}  -> jct_vs_rate  -> mean and p99 JCT against rate
                                         -> tail_vs_rate -> p99 TTFT and TBT against rate

matplotlib is imported inside the functions (it is needed only to draw), and only its
object-oriented API with the Agg canvas is used: no pyplot, no global backend switch, no
display needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxserve.metrics import RequestRecord, jcts, ttfts


def _figure(ncols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * ncols, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _ecdf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(np.asarray(values, dtype=np.float64))
    return x, np.arange(1, x.size + 1) / max(x.size, 1)


def latency_cdfs(results: Mapping[str, Sequence[RequestRecord]], path: str | os.PathLike) -> Path:
    """Empirical CDFs of JCT (left) and TTFT (right) of finished requests, one line per
    scheduler. Returns the path written."""
    fig, (ax_jct, ax_ttft) = _figure(2)
    for name, records in results.items():
        for ax, values in ((ax_jct, jcts(records)), (ax_ttft, ttfts(records))):
            x, y = _ecdf(values)
            ax.step(x, y, where="post", label=f"{name} (n={x.size})")
    for ax, what in ((ax_jct, "job completion time"), (ax_ttft, "time to first token")):
        ax.set_xlabel(f"{what} (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_jct.set_title("JCT CDF")
    ax_ttft.set_title("TTFT CDF")
    return _save(fig, path)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def vs_rate(
    sweep: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]],
    path: str | os.PathLike,
    panels: Sequence[tuple[str, str]],
) -> Path:
    """One panel per (summary key, label) against request rate, one line per scheduler;
    `sweep[name]` is [(rate, summarize(...) dict)]. Returns the path written."""
    fig, axes = _figure(len(panels))
    for name, points in sweep.items():
        points = sorted(points, key=lambda p: p[0])
        rates = [p[0] for p in points]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(rates, [_num(s[key]) for _, s in points], marker="o", label=name)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("request rate (requests/s)")
        ax.set_ylabel(f"{label} (s)")
        ax.set_title(f"{label} vs rate")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def jct_vs_rate(
    sweep: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]], path: str | os.PathLike
) -> Path:
    """Mean JCT (left) and p99 JCT (right) against request rate (`vs_rate`)."""
    return vs_rate(sweep, path, (("mean_jct", "mean JCT"), ("p99_jct", "p99 JCT")))


def tail_vs_rate(
    sweep: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]], path: str | os.PathLike
) -> Path:
    """P99 TTFT (left) and P99 TBT (right) against request rate (`vs_rate`)."""
    return vs_rate(sweep, path, (("p99_ttft", "p99 TTFT"), ("p99_tbt", "p99 TBT")))
