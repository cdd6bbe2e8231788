"""Tests for the embedded byte-level BPE tokenizer and local checkpoint loading."""

from __future__ import annotations

import json
import json.decoder
import platform
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tokenizers

from jaxserve.tokenizer import Tokenizer, load_default, load_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_tokenizer.py"
SHIPPED_JSON = REPO_ROOT / "jaxserve" / "assets" / "tokenizer.json"

UNICODE_TEXT = "héllo wörld ✓ 日本 \n\tdef f(x): return x**2"
CODE_SNIPPET = textwrap.dedent(
    '''
    class RunningMean:
        """Keep a running mean of the values seen so far."""

        def __init__(self) -> None:
            self.count = 0
            self.total = 0.0

        def update(self, value: float) -> float:
            self.count += 1
            self.total += value
            return self.total / self.count


    def running_means(values: list[float]) -> list[float]:
        tracker = RunningMean()
        return [tracker.update(v) for v in values]
    '''
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_default()


def test_default_is_cached(tok: Tokenizer) -> None:
    assert load_default() is tok


def test_vocab_and_special_ids(tok: Tokenizer) -> None:
    assert tok.vocab_size == 4096
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode([0, 1, 2], skip_special_tokens=False) == "<|pad|><|bos|><|eos|>"


@pytest.mark.parametrize("text", ["", " ", UNICODE_TEXT, CODE_SNIPPET, "  leading\r\n\x00"])
def test_roundtrip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_roundtrip_stdlib_file(tok: Tokenizer) -> None:
    source = Path(json.decoder.__file__).read_text(encoding="utf-8")
    assert tok.decode(tok.encode(source)) == source


def test_add_bos(tok: Tokenizer) -> None:
    ids = tok.encode("Question: Who?", add_bos=True)
    assert ids[0] == tok.bos_id
    assert ids[1:] == tok.encode("Question: Who?")
    assert tok.decode(ids) == "Question: Who?"


def test_compresses_code_and_text(tok: Tokenizer) -> None:
    # Held-out code gets roughly 2.7-3.4 bytes per token; bytes alone would give 1.0.
    sources = [CODE_SNIPPET, Path(json.decoder.__file__).read_text(encoding="utf-8")]
    for source in sources:
        assert len(tok.encode(source)) < len(source.encode("utf-8")) / 2.5
    english = (
        "Question: What is the capital city of Australia?\nAnswer: Canberra\n"
        "The novel was written by Charles Dickens and published in London in 1859."
    )
    assert len(tok.encode(english)) < len(english.encode("utf-8")) / 3.0


def test_decode_skips_out_of_range_ids(tok: Tokenizer) -> None:
    ids = tok.encode("hello world")
    noisy = [tok.vocab_size, *ids[:1], 10**9, -1, *ids[1:], tok.vocab_size + 7]
    assert tok.decode(noisy) == "hello world"
    assert tok.decode([tok.vocab_size, tok.vocab_size + 1]) == ""


def test_load_tokenizer_from_dir(tmp_path: Path, tok: Tokenizer) -> None:
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|bos|>", "eos_token": {"content": "<|eos|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.vocab_size, loaded.bos_id, loaded.eos_id) == (4096, 1, 2)
    assert loaded.pad_id is None
    assert loaded.encode(UNICODE_TEXT) == tok.encode(UNICODE_TEXT)
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).eos_id == 2


def test_load_tokenizer_ids_from_model_configs(tmp_path: Path, tok: Tokenizer) -> None:
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "pad_token_id": 0}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 1]}))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (1, 2, 0)


def test_load_tokenizer_without_special_tokens(tmp_path: Path, tok: Tokenizer) -> None:
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (None, None, None)
    with pytest.raises(ValueError):
        loaded.encode("x", add_bos=True)


def test_load_tokenizer_vocab_merges(
    tmp_path: Path, tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    tok.backend.model.save(str(tmp_path))  # vocab.json + merges.txt
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_id, loaded.eos_id) == (1, 2)
    assert loaded.encode(UNICODE_TEXT) == tok.encode(UNICODE_TEXT)
    assert loaded.decode(loaded.encode(UNICODE_TEXT)) == UNICODE_TEXT


def test_wraps_hf_fast_tokenizer(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    backend = tokenizers.Tokenizer.from_str(tok.backend.to_str())
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>"
    )
    wrapped = Tokenizer(hf)
    assert (wrapped.vocab_size, wrapped.bos_id, wrapped.eos_id, wrapped.pad_id) == (
        4096,
        1,
        2,
        None,
    )
    assert wrapped.decode(wrapped.encode(UNICODE_TEXT)) == UNICODE_TEXT


def test_load_tokenizer_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as excinfo:
        load_tokenizer(tmp_path)
    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert "tokenizer.json" in message and "tokenizer.model" in message
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "does-not-exist")


def test_build_script_reproduces_shipped_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BUILD_SCRIPT.parent))  # its corpus modules sit beside it
    reference = runpy.run_path(str(BUILD_SCRIPT))["REFERENCE_PYTHON"]
    if platform.python_version() != reference:
        pytest.skip(f"stdlib corpus is pinned to Python {reference}")
    out = tmp_path / "tokenizer.json"
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert out.read_bytes() == SHIPPED_JSON.read_bytes()
