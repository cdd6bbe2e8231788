"""Packed, padded language-modelling batches that depend on the step only.

``TokenStream(tokenizer, documents, weights=None, seq_len=128, batch_size=32, seed=0)``:
    ``documents`` maps a source name to its texts, ``weights`` gives each source's share of
    the rows (default: proportional to its token count). Texts are tokenised once, as
    ``[BOS] + text + [EOS]`` (no BOS where the tokenizer has none; EOS pads where it has no
    pad token). ``stream.batch(step)`` is a pure function of ``step``: each
    row takes its source by weight, then packs uniformly drawn whole documents until the
    next one does not fit, and pads the rest; a document longer than a whole row
    contributes a random window that fills the remaining space instead. It returns numpy
    arrays: ``tokens`` int32 [B, T+1]; ``inputs`` and ``targets`` int32 [B, T] (the two
    shifted views); ``mask`` float32 [B, T], 0 exactly where the target is padding;
    ``segment_ids`` int32 [B, T], the 1-based index of the document each input position
    belongs to within its row (0 on padding), for attention masks across documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _encode_all(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [tokenizer.encode(t) for t in texts]


class TokenStream:
    """Packed, padded language-modelling batches; ``batch(step)`` depends on ``step`` only."""

    def __init__(
        self,
        tokenizer: Any,
        documents: Mapping[str, Sequence[str]],
        weights: Mapping[str, float] | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        if tokenizer.eos_id is None:
            raise ValueError("the tokenizer needs an EOS token to end documents")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"bad shape: seq_len={seq_len}, batch_size={batch_size}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        eos = int(tokenizer.eos_id)
        # a tokenizer without BOS (Qwen2's) starts documents bare; without a pad token,
        # padding is EOS (the mask hides it either way)
        self.pad_id = eos if tokenizer.pad_id is None else int(tokenizer.pad_id)
        head = [] if tokenizer.bos_id is None else [int(tokenizer.bos_id)]
        self.sources: list[str] = []
        self._docs: list[list[np.ndarray]] = []
        for name, texts in documents.items():
            if weights is not None and weights.get(name, 0.0) <= 0.0:
                continue
            if not texts:
                raise ValueError(f"source {name!r} has no documents")
            ids = _encode_all(tokenizer, texts)
            self.sources.append(name)
            self._docs.append([np.asarray([*head, *d, eos], dtype=np.int32) for d in ids])
        if weights is not None:
            unknown = set(weights) - set(documents)
            if unknown:
                raise ValueError(f"weights for unknown sources: {sorted(unknown)}")
            raw = [float(weights[name]) for name in self.sources]
        else:
            raw = [float(sum(len(d) for d in docs)) for docs in self._docs]
        if not self.sources or sum(raw) <= 0:
            raise ValueError("no source with positive weight")
        self.weights = {name: w / sum(raw) for name, w in zip(self.sources, raw)}
        self._cum = np.cumsum(raw) / sum(raw)

    @property
    def num_tokens(self) -> dict[str, int]:
        """Tokens per source, counting each document's BOS and EOS."""
        return {n: int(sum(len(d) for d in docs)) for n, docs in zip(self.sources, self._docs)}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        rng = np.random.default_rng([self.seed, step])
        length = self.seq_len + 1
        tokens = np.full((self.batch_size, length), self.pad_id, dtype=np.int32)
        segments = np.zeros((self.batch_size, length), dtype=np.int32)
        sources = np.searchsorted(self._cum, rng.random(self.batch_size), side="right")
        for row, source in enumerate(sources):
            docs = self._docs[min(int(source), len(self._docs) - 1)]
            pos, segment = 0, 0
            while pos < length:
                doc = docs[int(rng.integers(len(docs)))]
                room = length - pos
                segment += 1
                if len(doc) <= room:
                    tokens[row, pos : pos + len(doc)] = doc
                    segments[row, pos : pos + len(doc)] = segment
                    pos += len(doc)
                elif len(doc) > length:  # a long document: a random window fills the row
                    start = int(rng.integers(len(doc) - room + 1))
                    tokens[row, pos:] = doc[start : start + room]
                    segments[row, pos:] = segment
                    pos = length
                else:  # the next document does not fit: pad the rest
                    break
        return {
            "tokens": tokens,
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "mask": (segments[:, 1:] > 0).astype(np.float32),
            "segment_ids": segments[:, :-1],
        }
