"""Several clients (tenants) in one workload, for fairness experiments."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from jaxserve.workload.request import TraceRequest, WorkloadError


def assign_clients(
    requests: Sequence[TraceRequest], weights: Mapping[str, float], seed: int = 0
) -> list[TraceRequest]:
    """Give each request a client drawn with probability proportional to its weight (thinning a
    Poisson stream this way gives each client a Poisson stream of rate weight share * rate)."""
    names = list(weights)
    p = np.asarray([weights[k] for k in names], dtype=np.float64)
    if not names or np.any(p < 0) or p.sum() <= 0:
        raise WorkloadError(f"weights must be non-negative with a positive sum, got {weights!r}")
    picks = np.random.default_rng(seed).choice(len(names), size=len(requests), p=p / p.sum())
    return [dataclasses.replace(r, client=names[k]) for r, k in zip(requests, picks)]


def merge_workloads(*workloads: Sequence[TraceRequest]) -> list[TraceRequest]:
    """Several workloads (e.g. one per client) as one, sorted by arrival; ids must be unique."""
    merged = sorted((r for w in workloads for r in w), key=lambda r: r.arrival)
    ids = [r.id for r in merged]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise WorkloadError(f"merge_workloads: duplicate id {dup!r}; give each workload a client")
    return merged


def client_weights(requests: Sequence[TraceRequest]) -> dict[str, float]:
    """{client: weight} of the clients whose requests give one (the others weigh 1); a client
    given two different weights is an error naming both requests."""
    out: dict[str, tuple[float, str]] = {}
    for r in requests:
        if r.weight is None:
            continue
        seen = out.setdefault(r.client, (r.weight, r.id))
        if seen[0] != r.weight:
            raise WorkloadError(
                f"client {r.client!r} has weight {seen[0]} (request {seen[1]!r}) and "
                f"{r.weight} (request {r.id!r}); give a client one weight"
            )
    return {c: w for c, (w, _) in out.items()}
