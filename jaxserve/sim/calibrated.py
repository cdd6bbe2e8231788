"""The calibrated cost model: fitted from the engine's own profile.json.

    profile.json --fit_profile--> CalibratedCost
      prefill[(n, s)]                  s = p0 + p1 n + p2 n^2          (one prompt of n tokens)
      decode_grid[(b, ctx, k, s)]      s = d0 + k (d1 + d2 b + d3 b ctx) (one call, k steps)
      swap[(bytes, s)]                 s = 2 (s0 + bytes / bandwidth)  (a round trip)
      host_per_iteration               -> `Timing.host`
      slot_update                      a decode call whose rows or block tables changed

With buckets, a decode call whose batch bucket the grid measured is read off the grid
(`decode_table`: linear in context and steps between measured points), the fitted formula
covering the rest: on a CPU the engine switches decode algorithm with the batch size, which
no one formula follows.

The engine runs fixed shape buckets (`Engine._prefill`, `Engine._decode`): a prefill of b
prompts is padded to [pow2(b), pow2(longest, 16)], a decode of b rows to pow2(b) rows whose
block tables are cut to pow2(pages of the longest context) pages, and every row attends to
that width. With `buckets=True` the model prices those padded shapes, which is what the
device computes; with `buckets=False` it prices the exact shapes (an engine without buckets).
Least squares with coefficients clipped at zero; no JAX here, only numpy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jaxserve.errors import InputError
from jaxserve.sched.plan import Plan
from jaxserve.sim.cost import pow2

__all__ = ["CalibratedCost", "fit_decode", "fit_prefill", "fit_profile", "fit_swap"]


@dataclass(frozen=True)
class CalibratedCost:
    """Device seconds of a plan on the profiled engine (module docstring)."""

    prefill: tuple[float, float, float]  # (p0, p1, p2): one prompt of n tokens
    decode: tuple[float, float, float, float]  # (d0, d1, d2, d3): one call of k steps
    swap: tuple[float, float]  # (s0 seconds per copy, bandwidth bytes/s)
    page_size: int  # tokens per page
    kv_bytes_per_page: int  # bytes a page swap moves
    buckets: bool = True  # price the engine's padded shapes
    min_rows: int = 1  # smallest batch bucket (the engine's data axis)
    # the measured decode grid {(batch, context, steps): seconds}: with buckets, a call whose
    # batch bucket was measured is read off it (linear in context and in steps between the
    # measured ones, the end segments extended) instead of the fitted formula, since one
    # formula misses the engine's change of decode algorithm between batch sizes
    decode_table: tuple[tuple[int, int, int, float], ...] = ()
    slot_update: float = 0.0  # seconds to update the engine's resident decode batch (its
    # rows or block tables changed); the loop adds it (`row_update_time`)
    time_scale: float = 1.0  # device seconds in a served run / profiled seconds (fitted on a
    # calibration run: the profile times each call alone, the engine runs them back to back
    # next to its host work)

    @property
    def row_update_time(self) -> float:
        """Device seconds of a decode call whose rows or block tables changed, on top."""
        return self.slot_update * self.time_scale

    def prefill_time(self, lens: Sequence[int]) -> float:
        if not lens:
            return 0.0
        p0, p1, p2 = self.prefill
        if self.buckets:
            b, n = pow2(len(lens), self.min_rows), pow2(max(lens), 16)
            return p0 + b * (p1 * n + p2 * n * n)
        return p0 + sum(p1 * n + p2 * n * n for n in lens)

    def decode_time(self, contexts: Sequence[int], steps: int = 1) -> float:
        """One call decoding rows at these contexts (tokens, before the call) `steps` times."""
        if not contexts:
            return 0.0
        d0, d1, d2, d3 = self.decode
        if self.buckets:
            b = pow2(len(contexts), self.min_rows)
            reach = max(contexts) + steps - 1
            width = pow2(-(-reach // self.page_size)) * self.page_size
            if self.decode_table:
                t = _table_time(self.decode_table, b, width, steps)
                if t is not None:
                    return t
            return d0 + steps * (d1 + d2 * b + d3 * b * width)
        ctx = sum(contexts) + len(contexts) * (steps - 1) / 2
        return d0 + steps * (d1 + d2 * len(contexts) + d3 * ctx)

    def swap_time(self, num_pages: int) -> float:
        """One copy of `num_pages` pages, one way."""
        s0, bandwidth = self.swap
        return s0 + num_pages * self.kv_bytes_per_page / bandwidth if num_pages else 0.0

    def iteration_time(self, plan: Plan, steps: int = 1) -> float:
        t = sum(self.swap_time(len(p)) for _, p in plan.swap_out)
        t += sum(self.swap_time(len(p)) for _, p in plan.swap_in)
        t += self.prefill_time([r.context_len for r in plan.prefill])
        t += self.decode_time([r.context_len for r in plan.decode], steps)
        return t * self.time_scale


def _lerp(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through sorted (x, y) points, end segments extended, floored at 0."""
    if len(points) == 1:
        return points[0][1]
    k = 1
    while k < len(points) - 1 and points[k][0] < x:
        k += 1
    (x0, y0), (x1, y1) = points[k - 1], points[k]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def _table_time(table, b: int, width: int, steps: int) -> float | None:
    """A decode call read off the measured grid (see `CalibratedCost.decode_table`); None
    when batch bucket `b` was not measured."""
    rows = [(c, k, t) for bb, c, k, t in table if bb == b]
    if not rows:
        return None
    by_steps: dict[int, list[tuple[float, float]]] = {}
    for c, k, t in rows:
        by_steps.setdefault(k, []).append((c, t))
    at_width = sorted((k, _lerp(sorted(pts), width)) for k, pts in by_steps.items())
    return _lerp(at_width, steps)


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with coefficients >= 0 (drop the negative ones and refit)."""
    keep = np.ones(x.shape[1], bool)
    coef = np.zeros(x.shape[1])
    for _ in range(x.shape[1]):
        sol, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        coef[:] = 0.0
        coef[keep] = sol
        if (sol >= 0).all():
            break
        keep[np.flatnonzero(keep)[sol < 0]] = False
    return np.maximum(coef, 0.0)


def fit_prefill(table: Sequence[tuple[int, float]]) -> tuple[float, float, float]:
    """(p0, p1, p2) of s = p0 + p1 n + p2 n^2 over (n, seconds) points (fewer than three
    points: a line, or a proportional rate)."""
    n = np.array([p[0] for p in table], float)
    y = np.array([p[1] for p in table], float)
    cols = [np.ones_like(n), n, n * n][: min(3, len(n))] if len(n) > 1 else [n]
    coef = _nnls(np.stack(cols, 1), y)
    if len(n) == 1:
        return (0.0, float(coef[0]), 0.0)
    return tuple(float(c) for c in np.pad(coef, (0, 3 - len(coef))))  # type: ignore[return-value]


def fit_decode(grid: Sequence[tuple[int, int, int, float]]) -> tuple[float, float, float, float]:
    """(d0, d1, d2, d3) of s = d0 + k (d1 + d2 b + d3 b ctx) over (b, ctx, k, seconds) points.
    Terms the grid cannot separate (one batch size, one context, one step count) are left
    out of the fit and come back as zero."""
    g = np.array([p[:4] for p in grid], float)
    b, ctx, k, y = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
    cols = {0: np.ones_like(b), 1: k, 2: k * b, 3: k * b * ctx}
    use = [1]
    if len(set(k)) > 1:
        use.append(0)
    if len(set(b)) > 1:
        use.append(2)
    if len(set(zip(b, ctx))) > len(set(b)) or (len(set(ctx)) > 1):
        use.append(3)
    coef = _nnls(np.stack([cols[j] for j in use], 1), y)
    out = [0.0] * 4
    for j, c in zip(use, coef):
        out[j] = float(c)
    return tuple(out)  # type: ignore[return-value]


def fit_swap(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(s0, bandwidth) of one one-way copy from round trips (bytes, seconds)."""
    nbytes = np.array([p[0] for p in points], float)
    one_way = np.array([p[1] for p in points], float) / 2
    if len(set(nbytes)) < 2:
        return (0.0, float(nbytes.sum() / one_way.sum()))
    s0, per_byte = _nnls(np.stack([np.ones_like(nbytes), nbytes], 1), one_way)
    return (float(s0), float(1 / per_byte) if per_byte > 0 else float("inf"))


def fit_profile(
    profile: Mapping | str,
    kv_bytes_per_page: int,
    buckets: bool = True,
    min_rows: int = 1,
    table: bool = True,
) -> CalibratedCost:
    """A `CalibratedCost` from a profile (a `jaxserve.profiler.Profile`, its dict, or the path
    of its profile.json); `table`: keep the measured decode grid for lookups (with buckets).
    `InputError` naming the file when it lacks what the fit needs."""
    where = profile if isinstance(profile, str) else "profile"
    if isinstance(profile, str):
        try:
            with open(profile) as f:
                profile = json.load(f)
        except OSError as e:
            raise InputError(f"{where}: cannot read the profile ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: not a JSON profile ({e})") from None
    if not isinstance(profile, Mapping):
        profile = vars(profile)
    try:
        prefill = [tuple(p) for p in profile["prefill"]]
        grid = [tuple(p) for p in profile.get("decode_grid") or []]
        if not grid:  # an older profile: decode by batch only
            grid = [(b, 0, 1, s) for b, s in profile["decode"]]
        swap = [tuple(p) for p in profile.get("swap") or []]
        page_size = int(profile.get("page_size", 16))
        if not swap:
            nbytes = kv_bytes_per_page
            swap = [(nbytes, 2 * nbytes / float(profile["swap_bandwidth"]))]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: not a profile ({e})") from None
    if not prefill or not grid:
        raise InputError(f"{where}: the profile has no prefill or decode timings to fit")
    return CalibratedCost(
        prefill=fit_prefill(prefill),
        decode=fit_decode(grid),
        swap=fit_swap(swap),
        page_size=page_size,
        kv_bytes_per_page=kv_bytes_per_page,
        buckets=buckets,
        min_rows=min_rows,
        decode_table=tuple(grid) if table and profile.get("decode_grid") else (),
        slot_update=float(profile.get("slot_update") or 0.0),
    )
