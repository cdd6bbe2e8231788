"""Train the byte-level BPE tokenizer embedded in ``jaxserve/assets/tokenizer.json``.

The training corpus (``tokenizer_corpus.py``: Python standard-library sources and generated
English built from the word lists in ``tokenizer_words.py``) is fully deterministic. Its stdlib
component depends on the interpreter's stdlib sources, so the output is only byte-identical
when rebuilt with the same Python version (see ``REFERENCE_PYTHON``).

Usage: ``python scripts/build_tokenizer.py [--out PATH]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from tokenizer_corpus import code_corpus, text_corpus
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "jaxserve" / "assets" / "tokenizer.json"
REFERENCE_PYTHON = "3.11.7"

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>"]


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    documents = list(code_corpus()) + list(text_corpus())
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, token
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output tokenizer.json")
    args = parser.parse_args(argv)
    if platform.python_version() != REFERENCE_PYTHON:
        print(
            f"warning: Python {platform.python_version()} differs from {REFERENCE_PYTHON}; "
            "the stdlib corpus (and hence the output) may differ",
            file=sys.stderr,
        )
    start = time.perf_counter()
    tokenizer = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out), pretty=False)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size} bytes) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
