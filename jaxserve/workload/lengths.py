"""Synthetic length distributions: prompt and output lengths drawn from fitted shapes.

LengthDistribution(scale, max_prompt_len, max_output_len).sample(n, rng)
    -> (prompt_lens [n], output_lens [n]), scaled, rounded, clipped to [1, max]
ShareGPTSynth   heavy-tailed (lognormal), ShareGPT's means
AlpacaSynth     light-tailed (Gamma), Alpaca's means
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxserve.workload.arrivals import arrivals
from jaxserve.workload.registry import WorkloadSpec, register_source
from jaxserve.workload.request import TraceRequest, WorkloadError


def _finish_lengths(raw: np.ndarray, scale: float, max_len: int | None) -> np.ndarray:
    """Scale, round to whole tokens, clip to [1, max_len]."""
    lens = np.rint(raw * scale).astype(np.int64)
    return np.clip(lens, 1, max_len if max_len is not None else None)


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
    """Prompt and output lengths drawn independently; `sample` scales, rounds and clips them.

    scale: multiplies both lengths before rounding (e.g. 0.1 for a tiny CPU model).
    max_prompt_len / max_output_len: upper clips (None: none); every length is at least 1.
    """

    scale: float = 1.0
    max_prompt_len: int | None = None
    max_output_len: int | None = None

    def _raw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """-> (prompt_lens [n], output_lens [n]), int64, each in [1, max]."""
        if not self.scale > 0:
            raise WorkloadError(f"scale must be positive, got {self.scale!r}")
        prompt, output = self._raw(n, rng)
        return (
            _finish_lengths(prompt, self.scale, self.max_prompt_len),
            _finish_lengths(output, self.scale, self.max_output_len),
        )


def _lognormal(mean: float, sigma: float, n: int, rng: np.random.Generator) -> np.ndarray:
    # A lognormal with parameters (mu, sigma) has mean exp(mu + sigma^2 / 2).
    return rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, size=n)


def _gamma(mean: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    shape = 1.0 / cv**2
    return rng.gamma(shape, mean / shape, size=n)


@dataclasses.dataclass(frozen=True)
class ShareGPTSynth(LengthDistribution):
    """Heavy-tailed lengths like ShareGPT (real ChatGPT conversations).

    Means from the vLLM paper (Kwon et al., SOSP 2023, Fig. 11): input 161.31 tokens, output
    337.99 tokens. Both are lognormal with those means. The paper gives means and histograms,
    no fitted shape, so the sigmas are a judgement call that gives long right tails: 1.2 for
    inputs (median ~78, p99 ~1.3k tokens) and 0.9 for outputs (median ~225, p99 ~1.8k).
    Prompt and output lengths are drawn independently (the real ones are weakly correlated).
    """

    mean_prompt: float = 161.31
    sigma_prompt: float = 1.2
    mean_output: float = 337.99
    sigma_output: float = 0.9

    def _raw(self, n, rng):
        return (
            _lognormal(self.mean_prompt, self.sigma_prompt, n, rng),
            _lognormal(self.mean_output, self.sigma_output, n, rng),
        )


@dataclasses.dataclass(frozen=True)
class AlpacaSynth(LengthDistribution):
    """Light-tailed lengths like Alpaca (short instructions and answers).

    Means from the vLLM paper: input 19.31 tokens, output 58.45 tokens. Gamma distributions
    (exponential tails, unlike ShareGPT's lognormal ones) with those means; the coefficients
    of variation (0.6 input, 0.8 output) are our choice, as no shape is published.
    """

    mean_prompt: float = 19.31
    cv_prompt: float = 0.6
    mean_output: float = 58.45
    cv_output: float = 0.8

    def _raw(self, n, rng):
        return (
            _gamma(self.mean_prompt, self.cv_prompt, n, rng),
            _gamma(self.mean_output, self.cv_output, n, rng),
        )


# Lower-case names, as make_workload spells them.
sharegpt_synth = ShareGPTSynth
alpaca_synth = AlpacaSynth
LENGTH_DISTRIBUTIONS: dict[str, type[LengthDistribution]] = {
    "sharegpt_synth": ShareGPTSynth,
    "alpaca_synth": AlpacaSynth,
}


class SyntheticSource:
    """Lengths from a named distribution, arrivals from the arrival process."""

    def __init__(self, name: str, distribution: type[LengthDistribution]):
        self.name, self.distribution = name, distribution

    def matches(self, spec: str) -> bool:
        return spec == self.name

    def build(self, spec: str, w: WorkloadSpec) -> list[TraceRequest]:
        rate = w.require_rate(spec)
        n = w.require_count(spec)
        try:
            dist = self.distribution(
                scale=w.scale,
                max_prompt_len=w.max_prompt_len,
                max_output_len=w.max_output_len,
                **(w.length_params or {}),
            )
        except TypeError as e:
            raise WorkloadError(f"length_params {w.length_params!r} for {spec!r}: {e}") from None
        arr_rng, len_rng = w.streams()
        times = arrivals(w.arrival, rate, n, arr_rng, cv=w.cv, burst_size=w.burst_size)
        prompt_lens, output_lens = dist.sample(n, len_rng)
        prefix = "r" if w.client == "default" else f"{w.client}-"
        return [
            TraceRequest(
                id=f"{prefix}{i}",
                arrival=float(t),
                prompt_len=int(p),
                output_len=int(o),
                client=w.client,
            )
            for i, (t, p, o) in enumerate(zip(times, prompt_lens, output_lens))
        ]


for _name, _dist in LENGTH_DISTRIBUTIONS.items():
    register_source(SyntheticSource(_name, _dist))
