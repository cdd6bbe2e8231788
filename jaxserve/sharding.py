"""Device meshes and the logical-axis rules that place parameters, KV pages and batches.

Every parameter carries logical axis names (`axes=("embed", "heads", "head_dim")`). A short
rules table maps each logical name to a mesh axis; a dimension is sharded only when its size
divides evenly (a 2-KV-head model on `model:4` keeps its KV heads replicated).

    --mesh=data:2,model:4  ->  Mesh(devices[2, 4], ("data", "model"))
    heads, kv_heads, mlp, vocab -> "model" (tensor parallel);  batch -> "data"
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxserve.kvcache.pages import KVPages

# logical axis -> mesh axis (None: replicated)
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("pages", None),
    ("page_slot", None),
)

KV_PAGE_AXES = ("kv_heads", "pages", "page_slot", "head_dim")  # one layer's K or V
MESH_AXES = ("data", "model")


def parse_mesh(spec: str) -> dict[str, int]:
    """`"data:2,model:4"` -> {"data": 2, "model": 4}. Raises ValueError naming the problem."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, size = part.partition(":")
        if not sep or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"mesh entry {part!r} is not NAME:SIZE with a positive size")
        name = name.strip()
        if name not in MESH_AXES:
            raise ValueError(f"unknown mesh axis {name!r}; axes are {MESH_AXES}")
        if name in out:
            raise ValueError(f"mesh axis {name!r} given twice")
        out[name] = int(size)
    if not out:
        raise ValueError(f"empty mesh spec {spec!r}")
    return out


def make_mesh(spec: str | dict[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A ("data", "model") mesh with automatic sharding propagation over the first N devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh(spec) if isinstance(spec, str) else dict(spec or {"data": 1, "model": 1})
    shape = tuple(sizes.get(a, 1) for a in MESH_AXES)
    n = int(np.prod(shape))
    if n > len(devices):
        raise ValueError(f"mesh {sizes} needs {n} devices; only {len(devices)} are available")
    grid = np.array(devices[:n]).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=LOGICAL_RULES
) -> PartitionSpec:
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        mesh_axis = table.get(name) if name is not None else None
        size = mesh.shape.get(mesh_axis, 1) if mesh_axis else 1
        if mesh_axis and size > 1 and dim % size == 0 and mesh_axis not in used:
            spec.append(mesh_axis)
            used.add(mesh_axis)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """A NamedSharding for every variable of an NNX state (replicated when it has no axes)."""

    def one(var):
        axes = var.get_metadata().get("axes")
        shape = var[...].shape
        spec = logical_to_spec(axes, shape, mesh) if axes else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: nnx.State, mesh: Mesh) -> nnx.State:
    return jax.device_put(state, state_shardings(state, mesh))


def kv_sharding(mesh: Mesh, layer_shapes: Sequence[Sequence[int]]):
    """The shardings of a `KVPages` with these per-layer shapes (a `KVPages` of them)."""
    one = tuple(NamedSharding(mesh, logical_to_spec(KV_PAGE_AXES, s, mesh)) for s in layer_shapes)
    return KVPages(one, one)


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Shard the leading (batch) axis over "data" when it divides; the rest replicated."""
    axes = ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))
