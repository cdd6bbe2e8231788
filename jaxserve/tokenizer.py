"""Tokenizers: the embedded byte-level BPE and local HF-format checkpoint directories.

Nothing here touches the network; HF tokenizers are read from local files only.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers

DEFAULT_ASSET = "assets/tokenizer.json"
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
# Files that define a tokenizer, in order of preference.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt", "tokenizer.model")
# Files read (in this order) for special-token ids; earlier files win.
CONFIG_FILES = ("tokenizer_config.json", "config.json", "generation_config.json")


class Tokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` (or an HF fast tokenizer)."""

    def __init__(
        self,
        backend: Any,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        if not isinstance(backend, tokenizers.Tokenizer):  # HF PreTrainedTokenizerFast
            bos_id = backend.bos_token_id if bos_id is None else bos_id
            eos_id = backend.eos_token_id if eos_id is None else eos_id
            pad_id = backend.pad_token_id if pad_id is None else pad_id
            backend = backend.backend_tokenizer
        self._tok: tokenizers.Tokenizer = backend
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._bos_id, self._eos_id, self._pad_id = bos_id, eos_id, pad_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self._bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no BOS token")
            ids.insert(0, self._bos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Decode ids, silently dropping ids outside ``[0, vocab_size)``."""
        valid = [int(i) for i in ids if 0 <= int(i) < self._vocab_size]
        return self._tok.decode(valid, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id})"
        )


@functools.lru_cache(maxsize=1)
def load_default() -> Tokenizer:
    """The byte-level BPE (vocab 4096) shipped in ``jaxserve/assets/tokenizer.json``."""
    resource = importlib.resources.files("jaxserve").joinpath(DEFAULT_ASSET)
    backend = tokenizers.Tokenizer.from_str(resource.read_text(encoding="utf-8"))
    return Tokenizer(
        backend,
        bos_id=backend.token_to_id(BOS_TOKEN),
        eos_id=backend.token_to_id(EOS_TOKEN),
        pad_id=backend.token_to_id(PAD_TOKEN),
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _special_ids(directory: Path, backend: tokenizers.Tokenizer) -> dict[str, int | None]:
    """bos/eos/pad ids from the first config file that defines each of them."""
    ids: dict[str, int | None] = {"bos": None, "eos": None, "pad": None}
    for name in CONFIG_FILES:
        cfg = _read_json(directory / name)
        for key in ids:
            if ids[key] is not None:
                continue
            token = cfg.get(f"{key}_token")
            if isinstance(token, dict):  # serialized AddedToken
                token = token.get("content")
            value = backend.token_to_id(token) if isinstance(token, str) else None
            if value is None:
                value = cfg.get(f"{key}_token_id")
                if isinstance(value, list):  # e.g. several eos ids in generation configs
                    value = value[0] if value else None
            ids[key] = value if isinstance(value, int) else None
    return ids


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer from a local HF-format directory (or a ``tokenizer.json`` file)."""
    path = Path(path)
    if path.is_file():
        directory, tokenizer_json = path.parent, path
    else:
        directory, tokenizer_json = path, path / "tokenizer.json"
    if tokenizer_json.is_file():
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        ids = _special_ids(directory, backend)
        return Tokenizer(backend, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])
    has_bpe = (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    if directory.is_dir() and (has_bpe or (directory / "tokenizer.model").is_file()):
        from transformers import AutoTokenizer  # slow path: conversion to a fast tokenizer

        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        backend = getattr(hf, "backend_tokenizer", None)
        if not isinstance(backend, tokenizers.Tokenizer):
            raise ValueError(f"could not build a fast tokenizer from {str(directory)!r}")
        ids = _special_ids(directory, backend)
        return Tokenizer(hf, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])
    raise FileNotFoundError(
        f"no tokenizer found in {str(directory)!r}: looked for {', '.join(TOKENIZER_FILES)}"
    )
