"""Arrival processes: when requests come. Each returns arrival times [n] in seconds.

poisson_arrivals(rate, n, rng)               exponential gaps (rate=inf: all at 0)
gamma_arrivals(rate, cv, n, rng)             Gamma gaps, coefficient of variation cv
burst_arrivals(rate, burst_size, n, rng)     Poisson groups of burst_size at one instant
arrivals(kind, rate, n, rng, cv=, burst_size=)   dispatch by name (ARRIVALS)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from jaxserve.workload.request import WorkloadError


def _check_rate(rate: float, n: int) -> None:
    if isinstance(rate, bool) or not (isinstance(rate, numbers.Real) and rate > 0):
        raise WorkloadError(f"rate must be a positive number of requests/s, got {rate!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise WorkloadError(f"n must be a non-negative integer, got {n!r}")


def poisson_arrivals(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n arrival times [n] (seconds, nondecreasing) of a Poisson process with `rate` requests/s.

    Inter-arrival times are exponential with mean 1/rate; the first arrival comes one gap after
    0. `rate=math.inf` puts every request at 0 (an offline batch).
    """
    _check_rate(rate, n)
    if math.isinf(rate):
        return np.zeros(n)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def gamma_arrivals(rate: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bursty arrivals [n]: Gamma inter-arrival times with mean 1/rate and coefficient of
    variation `cv` (std / mean). cv = 1 is Poisson; cv > 1 is burstier, cv < 1 more regular.

    Gamma(shape k = 1/cv^2, scale = 1/(rate k)) has mean 1/rate and CV exactly cv.
    """
    _check_rate(rate, n)
    if not cv > 0:
        raise WorkloadError(f"cv must be positive, got {cv!r}")
    if math.isinf(rate):
        return np.zeros(n)
    shape = 1.0 / cv**2
    return np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=n))


def burst_arrivals(rate: float, burst_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrivals [n] in bursts: groups of `burst_size` requests at the same instant, the groups
    a Poisson process. `rate` is the mean *request* rate, so groups come at rate / burst_size.
    The last group is partial when burst_size does not divide n.
    """
    _check_rate(rate, n)
    if not isinstance(burst_size, (int, np.integer)) or burst_size < 1:
        raise WorkloadError(f"burst_size must be a positive integer, got {burst_size!r}")
    groups = poisson_arrivals(rate / burst_size, -(-n // burst_size), rng)
    return np.repeat(groups, burst_size)[:n]


ARRIVALS = ("poisson", "gamma", "burst")


def arrivals(
    kind: str,
    rate: float,
    n: int,
    rng: np.random.Generator,
    *,
    cv: float = 1.0,
    burst_size: int = 4,
) -> np.ndarray:
    """Dispatch on the arrival process name: "poisson", "gamma" (uses cv), "burst" (burst_size)."""
    if kind == "poisson":
        return poisson_arrivals(rate, n, rng)
    if kind == "gamma":
        return gamma_arrivals(rate, cv, n, rng)
    if kind == "burst":
        return burst_arrivals(rate, burst_size, n, rng)
    raise WorkloadError(f"arrival must be one of {ARRIVALS}, got {kind!r}")
