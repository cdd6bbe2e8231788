"""Token sampling with per-row parameters, fused into the jitted decode step.

Each row has its own temperature (0 = greedy), top-k (0 = off), top-p (1 = off) and RNG key.
A token is drawn by inverting the kept tokens' cumulative distribution at one uniform number,
a hash of (row key, position): a request samples the same tokens whatever batch it shares and
however often it is preempted. The hash (two murmur3 finalisers) stands in for JAX's threefry
generator, whose twenty unrolled rounds made up about a third of the compile time of every
decode program on XLA:CPU (docs/notes.md). When every row is greedy the sort over the
vocabulary is skipped (`lax.cond` runs one branch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(s for s in self.stop_strings if s))


def sampling_arrays(
    params: Sequence[SamplingParams], keys=None, batch: int | None = None
) -> dict[str, np.ndarray]:
    """The per-row sampling inputs of a jitted step, as numpy arrays: keys [B, 2] uint32,
    temperature [B] float32, top_k [B] int32, top_p [B] float32. Row i follows params[i] and
    keys[i] (zero keys without `keys`); rows past len(params), up to `batch`, are greedy."""
    n = len(params)
    b = n if batch is None else batch
    out = {
        "keys": np.zeros((b, 2), np.uint32),
        "temperature": np.zeros(b, np.float32),
        "top_k": np.zeros(b, np.int32),
        "top_p": np.ones(b, np.float32),
    }
    if keys is not None:
        keys = np.asarray(keys, np.uint32).reshape(-1, 2)
        out["keys"][: len(keys)] = keys
    if n:
        out["temperature"][:n] = [p.temperature for p in params]
        out["top_k"][:n] = [p.top_k for p in params]
        out["top_p"][:n] = [p.top_p for p in params]
    return out


def row_keys(seeds: jax.Array) -> jax.Array:
    """[B] int seeds -> [B] raw PRNG keys."""
    return jax.vmap(jax.random.PRNGKey)(seeds)


def _mix(x: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: every input bit flips each output bit with probability
    close to 1/2."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def uniform(keys: jax.Array, positions: jax.Array) -> jax.Array:
    """One number in [0, 1) per row from keys [B, 2] uint32 and positions [B]: the same
    (key, position) always gives the same number."""
    keys = keys.astype(jnp.uint32)
    pos = positions.astype(jnp.uint32) * np.uint32(0x9E3779B9)  # spread consecutive positions
    h = _mix(keys[:, 0] ^ _mix(keys[:, 1] + pos))
    return (h >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def _argmax(logits: jax.Array) -> jax.Array:
    """The first index of the maximum over the last axis, as a max and a min: XLA:CPU runs
    `jnp.argmax`'s (value, index) reduction as a scalar loop (37 us a step over the `small`
    preset's 8192 words). A row with a NaN logit yields the NaN's first index, as argmax does.
    """
    vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)  # NaN if the row has one
    hit = (logits == top) | jnp.isnan(logits)
    return jnp.min(jnp.where(hit, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def sample(
    logits: jax.Array,
    keys: jax.Array,
    positions: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
) -> jax.Array:
    """Next tokens [B] int32 from logits [B, V]; keys [B, 2]; positions, params: [B]."""
    logits = logits.astype(jnp.float32)
    greedy = _argmax(logits)

    def stochastic() -> jax.Array:
        vocab = logits.shape[-1]
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        vals, idx = jax.lax.top_k(scaled, vocab)  # sorted, descending  [B, V]
        ranks = jnp.arange(vocab)[None, :]
        keep = (top_k[:, None] <= 0) | (ranks < top_k[:, None])
        probs = jax.nn.softmax(jnp.where(keep, vals, -jnp.inf), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = keep & (mass_before < top_p[:, None])  # the first token is always kept
        # the kept tokens are a prefix of the sorted ones: invert their cumulative mass
        mass = jnp.cumsum(jnp.where(keep, probs, 0.0), axis=-1)
        target = uniform(keys, positions) * mass[:, -1]
        # (a target rounded up to the whole mass must still land on a kept token)
        last_kept = jnp.sum(keep, axis=-1) - 1
        choice = jnp.minimum(jnp.sum(mass <= target[:, None], axis=-1), last_kept)
        sampled = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
        return jnp.where(temperature > 0, sampled, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), stochastic, lambda: greedy)
