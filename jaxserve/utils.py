"""Small helpers shared across the tree: shape buckets, the run's environment, atomic writes.

    pow2(n, lo)          the power-of-two shape bucket of a batch, a length or a page count
    pow2_range(n)        every bucket up to pow2(n): the shapes to compile ahead of time
    environment()        what produced a figure: versions, devices, CPU, threading variables,
                         the command line
    atomic_open(path)    write a file under a temporary name and rename it over `path` at the
                         end, so a reader never sees half a file (nor does a killed run leave one)
    write_json(path, x)  a results file through atomic_open

No jax import at module level: the pure-Python rooms (the scheduler, workloads) may use it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

# Environment variables that change how fast the same code runs.
_ENV_VARS = ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pow2(n: int, lo: int = 1) -> int:
    """The smallest power of two >= n, and at least `lo` (pow2(0) == pow2(1) == 1)."""
    return max(lo, 1 << max(0, n - 1).bit_length())


def pow2_range(n: int) -> list[int]:
    """[1, 2, 4, ..., pow2(n)]."""
    return [1 << i for i in range(pow2(n).bit_length())]


def environment(packages: Sequence[str] = ()) -> dict[str, Any]:
    """The machine and software a run used. `packages`: more modules whose versions to record
    (e.g. "torch", which also records its thread count)."""
    import flax
    import jax
    import jaxlib
    import numpy as np

    devices = jax.devices()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
        "argv": list(sys.argv),  # the command line (argv[0] is the script's path)
    }
    for name in packages:
        module = importlib.import_module(name)
        env[name] = getattr(module, "__version__", None)
        if name == "torch":
            env["torch_threads"] = module.get_num_threads()
    return env


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """open(path, mode) that writes `path.tmp<pid>` and renames it over `path` on success;
    on an exception the temporary file is removed and `path` is left as it was. Parent
    directories are created."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, payload: Any, **dump_kwargs) -> None:
    """`payload` as indented JSON (values JSON cannot hold become strings), atomically."""
    dump_kwargs = {"indent": 1, "default": str} | dump_kwargs
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, **dump_kwargs)
