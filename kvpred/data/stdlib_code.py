"""Python code to train on: the interpreter's own standard library.

``stdlib_files(max_bytes, seed)``: a seeded selection of the interpreter's standard-library
    ``*.py`` files (no tests, site-packages, encodings, caches or huge files).
``code_documents(max_bytes=1_000_000, seed=0, chunk_bytes=4096)``: their text, cut at line
    boundaries into chunks of at most ``chunk_bytes`` (longer single lines stay whole).
    Identical for a given interpreter installation.
"""

from __future__ import annotations

import functools
import random
import sysconfig
from pathlib import Path

_SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "encodings",
        "pydoc_data",
        "lib2to3",
        "turtledemo",
    }
)
MAX_FILE_BYTES = 64_000


def _skip(rel: Path) -> bool:
    if any(p in _SKIP_DIRS or p.startswith("config-") for p in rel.parts[:-1]):
        return True
    name = rel.name
    return name.startswith(("test_", "_sysconfigdata")) or name == "__main__.py"


@functools.lru_cache(maxsize=1)
def _stdlib_candidates() -> tuple[tuple[Path, int], ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _skip(rel) or not path.is_file():
            continue
        size = path.stat().st_size
        if 0 < size <= MAX_FILE_BYTES:
            found.append((rel.as_posix(), path, size))
    found.sort()
    return tuple((path, size) for _, path, size in found)


def stdlib_files(max_bytes: int = 1_000_000, seed: int = 0) -> list[Path]:
    """A seeded selection of stdlib sources totalling at most ``max_bytes``, sorted by path."""
    candidates = list(_stdlib_candidates())
    random.Random(f"kvpred-code-{seed}").shuffle(candidates)
    chosen, total = [], 0
    for path, size in candidates:
        if total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return sorted(chosen)


def _chunks(text: str, chunk_bytes: int) -> list[str]:
    out, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if current and size + n > chunk_bytes:
            out.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        out.append("".join(current))
    return [c for c in out if c.strip()]


def code_documents(max_bytes: int = 1_000_000, seed: int = 0, chunk_bytes: int = 4096) -> list[str]:
    """Stdlib source chunks of at most ``chunk_bytes`` (cut at line boundaries)."""
    docs: list[str] = []
    for path in stdlib_files(max_bytes, seed):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.extend(_chunks(text, chunk_bytes))
    return docs
