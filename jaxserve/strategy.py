"""How a runner decodes on its backend: the attention kernel and two CPU-only strategies.

    DecodeStrategy.choose(mesh, state, kernel=..., contiguous=..., out_in_weights=...)
      .attention       the cached attention the model calls (`PagedAttention(kernel)`)
      .contiguous_for(rows, steps), .out_in_for(rows)   what a decode chunk of that shape uses

The model has one paged attention path (`jaxserve.models.attention.PagedAttention`); what is
particular to a backend lives here, chosen once when the runner is built:

  * kernel: "pallas_gpu" / "pallas_tpu" on a one-device GPU / TPU mesh (the paged-attention
    kernels JAX ships, reading the pages in place), "xla" elsewhere.
  * contiguous decode (one CPU device): a chunk of several steps for fewer than
    `CONTIGUOUS_MAX_ROWS` rows copies the rows' cache out of the pages once (`ContiguousKV`),
    decodes on that copy (`ContiguousAttention`), and writes the chunk's tokens back to the
    pages at its end. The pages would otherwise be gathered for every layer at every step,
    which costs more than the attention itself at batch 1 on XLA:CPU (small preset: 1.48
    against 1.56 ms a step). The copy holds the rows' whole block-table reach, so it is off
    on accelerators, where memory is the scarce resource.
  * out-in weights (one CPU device, while the copy takes at most `OUT_IN_MAX_BYTES`): a
    decode of one row reads a second copy of every projection weight, stored as one
    [out, in] matrix (`out_in_layout`). XLA:CPU runs that matrix-vector product faster than
    `x @ W` over the model's [in, out] layout (`small`, batch 1: 1.43 against 1.57 ms a step)
    but its products of several rows slower (batch 16: 5.8 against 4.9 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxserve.kvcache.pages import KVPages, gather_layer, write_all_layers
from jaxserve.models.attention import KERNELS, PagedAttention

CONTIGUOUS_MAX_ROWS = 3
OUT_IN_MAX_BYTES = 1 << 30


# -- out-in weights ---------------------------------------------------------------------------


def out_in_layout(state: nnx.State) -> nnx.State:
    """The state with every projection weight stored as one [out, in] matrix.

    `jaxserve.models.transformer.dense` reads either layout; the variables are new, so the
    state passed in is left as it was.
    """

    def one(var):
        meta = var.get_metadata()
        n = meta.get("linear_in")
        if n is None or "out_in" in meta:
            return var
        w = var[...]
        in_shape, out_shape = tuple(w.shape[:n]), tuple(w.shape[n:])
        matrix = jnp.reshape(w, (math.prod(in_shape), math.prod(out_shape))).T
        axes = meta.get("axes")
        # merged dims keep the name of their outermost axis (heads, not head_dim)
        axes = (axes[n], axes[0]) if axes else None
        return var.replace(matrix, axes=axes, out_in=(in_shape, out_shape))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def projection_bytes(state: nnx.State) -> int:
    """Bytes of the projection weights (what `out_in_layout` copies)."""
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return sum(v[...].nbytes for v in leaves if "linear_in" in v.get_metadata())


# -- contiguous decode ------------------------------------------------------------------------


class ContiguousKV(NamedTuple):
    """Every layer's cache of `B` sequences, contiguous per KV head, for one-token decode steps.

    k[l]: [B * K_l, C, head_dim] and v[l]: [B * K_l, head_dim, C] for a layer with K_l KV
    heads; row `b * K_l + h` is head h of sequence b, and C (= max_pages * page_size, the
    block tables' reach) indexes positions. Both attention products then read the cache as
    it lies, one batched matrix product over the rows. Batch and heads share one axis because
    XLA:CPU copies a loop-carried array on every step when its leading axis has size 1.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def gather_contiguous(kv: KVPages, block_tables: jax.Array) -> ContiguousKV:
    """Copy every layer's cache of the block tables' sequences out of the pages."""
    ks, vs = [], []
    for layer in range(kv.num_layers):
        k, v = gather_layer(kv, layer, block_tables)  # [K, B, C, D]
        heads, b, c, d = k.shape
        ks.append(k.transpose(1, 0, 2, 3).reshape(b * heads, c, d))
        vs.append(v.transpose(1, 0, 3, 2).reshape(b * heads, d, c))
    return ContiguousKV(tuple(ks), tuple(vs))


def write_contiguous_layer(
    k_cache: jax.Array, v_cache: jax.Array, positions: jax.Array, k: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Write one token per sequence into a layer of a `ContiguousKV`.

    k, v: [B, 1, K, head_dim] (keys already normed and rotated); positions: [B]. One
    dynamic-update-slice per row, which XLA applies in place.
    """
    b, _, heads, d = k.shape
    new_k = k[:, 0].reshape(b * heads, 1, d).astype(k_cache.dtype)
    new_v = v[:, 0].reshape(b * heads, d, 1).astype(v_cache.dtype)
    zero = jnp.zeros((), positions.dtype)
    for row in range(b):
        first, pos = row * heads, positions[row]
        rows = slice(first, first + heads)
        k_cache = jax.lax.dynamic_update_slice(k_cache, new_k[rows], (first, pos, zero))
        v_cache = jax.lax.dynamic_update_slice(v_cache, new_v[rows], (first, zero, pos))
    return k_cache, v_cache


def flush_contiguous(
    kv: KVPages,
    block_tables: jax.Array,
    cache: ContiguousKV,
    start: jax.Array,
    end: jax.Array,
    max_tokens: int,
) -> KVPages:
    """Write back into the pages the tokens of positions `start[b] <= p < end[b]` of each row
    (at most `max_tokens` of them), the ones a chunk of decode steps appended to `cache`."""
    b = start.shape[0]
    positions = start[:, None] + jnp.arange(max_tokens, dtype=start.dtype)[None, :]  # [B, N]
    valid = positions < end[:, None]
    rows = jnp.arange(b)[:, None]
    ks, vs = [], []
    for k_cache, v_cache in zip(cache.k, cache.v):
        heads, c, d = k_cache.shape[0] // b, k_cache.shape[1], k_cache.shape[2]
        at = jnp.clip(positions, 0, c - 1)
        ks.append(k_cache.reshape(b, heads, c, d)[rows, :, at])  # [B, N, K, D]
        vs.append(v_cache.reshape(b, heads, d, c).transpose(0, 3, 1, 2)[rows, at])
    return write_all_layers(kv, block_tables, positions, valid, ks, vs)


def attend_contiguous(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, bias: jax.Array
) -> jax.Array:
    """Attention of one query per row over a `ContiguousKV` layer.

    q: [B, 1, H, D]; k_cache: [B * K, C, D]; v_cache: [B * K, D, C]; bias: [B, C], 0 where a
    position is attended and -1e30 where not. Returns [B, 1, H, D].
    Both products keep the cache as the left operand and the heads of a group as the small
    right one (XLA:CPU runs that shape several times faster than the transposed one), and the
    softmax is normalised after the value product, on H x D numbers instead of H x C.
    """
    b, _, h, d = q.shape
    kh = k_cache.shape[0] // b
    qg = (q[:, 0] * d**-0.5).reshape(b * kh, h // kh, d)  # [B*K, G, D]
    scores = jnp.einsum("NCD,NGD->NCG", k_cache, qg, preferred_element_type=jnp.float32)
    scores = scores + jnp.repeat(bias, kh, axis=0)[:, :, None]
    weights = jnp.exp(scores - jnp.max(scores, axis=1, keepdims=True))  # [B*K, C, G]
    out = jnp.einsum(
        "NDC,NCG->NDG", v_cache, weights.astype(v_cache.dtype), preferred_element_type=jnp.float32
    )
    out = out / jnp.sum(weights, axis=1)[:, None, :]
    return out.transpose(0, 2, 1).reshape(b, 1, h, d).astype(q.dtype)


def contiguous_attention(
    layer, q, k, v, cache: ContiguousKV, block_tables, positions, seq_lens, prefix=True
):
    """The model's cached-attention contract (see `Decoder.__call__`) on a `ContiguousKV`:
    one token per row, appended at `positions`, attending to positions < `seq_lens`."""
    if q.shape[1] != 1 or not prefix:
        raise ValueError("contiguous decode takes one token per row")
    k_cache, v_cache = write_contiguous_layer(cache.k[layer], cache.v[layer], positions[:, 0], k, v)
    k_pos = jnp.arange(k_cache.shape[1], dtype=positions.dtype)[None, :]
    seen = (k_pos <= positions) & (k_pos < seq_lens[:, None])  # [B, C]
    bias = jnp.where(seen, 0.0, -1e30).astype(jnp.float32)
    y = attend_contiguous(q, k_cache, v_cache, bias)
    swap = lambda xs, x: xs[:layer] + (x,) + xs[layer + 1 :]  # noqa: E731
    return y, ContiguousKV(swap(cache.k, k_cache), swap(cache.v, v_cache))


# -- the strategy -----------------------------------------------------------------------------


def default_kernel(mesh: Mesh) -> str:
    """The paged-attention kernel for a mesh: Pallas on a one-device GPU or TPU mesh (the
    shipped kernels are not partitioned over a mesh), XLA elsewhere."""
    platform = mesh.devices.flat[0].platform
    if mesh.size == 1 and platform in ("gpu", "cuda", "rocm"):
        return "pallas_gpu"
    if mesh.size == 1 and platform == "tpu":
        return "pallas_tpu"
    return "xla"


@dataclass(frozen=True)
class DecodeStrategy:
    kernel: str = "xla"
    contiguous: bool = False
    out_in_weights: bool = False
    interpret: bool = False  # Pallas kernels in the interpreter (equivalence tests on CPU)

    @classmethod
    def choose(
        cls,
        mesh: Mesh,
        state: nnx.State,
        kernel: str | None = None,
        contiguous: bool | None = None,
        out_in_weights: bool | None = None,
        interpret: bool = False,
    ) -> DecodeStrategy:
        """Defaults for the mesh (module docstring); an explicit choice is checked."""
        single_cpu = mesh.size == 1 and mesh.devices.flat[0].platform == "cpu"
        for name, value in (("contiguous_decode", contiguous), ("out_in_weights", out_in_weights)):
            if value and mesh.size > 1:
                raise ValueError(f"{name} needs a one-device mesh, got {dict(mesh.shape)}")
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(f"attention kernel must be one of {KERNELS}, not {kernel!r}")
        if kernel not in (None, "xla") and mesh.size > 1:
            raise ValueError(f"the {kernel} kernel needs a one-device mesh, got {dict(mesh.shape)}")
        if out_in_weights is None:
            out_in_weights = single_cpu and projection_bytes(state) <= OUT_IN_MAX_BYTES
        return cls(
            kernel=default_kernel(mesh) if kernel is None else kernel,
            contiguous=single_cpu if contiguous is None else contiguous,
            out_in_weights=out_in_weights,
            interpret=interpret,
        )

    @property
    def attention(self) -> PagedAttention:
        return PagedAttention(self.kernel, self.interpret)

    def contiguous_for(self, rows: int, steps: int) -> bool:
        """Whether a decode chunk of `rows` x `steps` runs on a `ContiguousKV` copy."""
        return self.contiguous and steps > 1 and rows <= CONTIGUOUS_MAX_ROWS

    def out_in_for(self, rows: int) -> bool:
        """Whether a decode of `rows` rows reads the [out, in] weight copy."""
        return self.out_in_weights and rows == 1
