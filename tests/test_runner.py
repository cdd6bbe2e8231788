"""ModelRunner's decode paths against the plain ones: contiguous cache, [out, in] weights."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx
from test_model import openelm_like_config

from jaxserve import sharding as shd
from jaxserve import strategy as strategy_module
from jaxserve.kvcache.pages import NULL_PAGE
from jaxserve.runner import ModelRunner

PAGE = 4
PROMPTS = ([5, 9, 13, 4, 7, 22], [31, 8, 3], [])  # the third row is padding
CHUNK = 6


def _batch(first_tokens, lengths, block_tables, remaining, stop_ids):
    b = len(lengths)
    return {
        "tokens": np.asarray(first_tokens, np.int32),
        "positions": np.asarray(lengths, np.int32),
        "block_tables": block_tables,
        "active": np.asarray([n > 0 for n in lengths]),
        "remaining": np.asarray(remaining, np.int32),
        "stop_ids": np.asarray(stop_ids, np.int32),
        "keys": np.zeros((b, 2), np.uint32),
        "temperature": np.zeros(b, np.float32),
        "top_k": np.zeros(b, np.int32),
        "top_p": np.ones(b, np.float32),
    }


def _run(runner: ModelRunner, stop_ids, remaining):
    """Prefill the prompts, then two decode chunks; returns tokens, emitted, pages, batch."""
    lengths = [len(p) for p in PROMPTS]
    # rows 0 and 1 on scattered pages; the padding row on the null page
    block_tables = np.array([[7, 2, 11, 5, 9, 0], [3, 12, 8, 1, 0, 0], [0] * 6], np.int32)
    tokens = np.zeros((len(PROMPTS), max(lengths)), np.int32)
    for i, p in enumerate(PROMPTS):
        tokens[i, : len(p)] = p
    kv = runner.new_kv(14, PAGE)
    prefill = _batch(np.zeros(3), lengths, block_tables, remaining, stop_ids)
    prefill = {k: prefill[k] for k in ("block_tables", "keys", "temperature", "top_k", "top_p")}
    prefill.update(tokens=tokens, lengths=np.asarray(lengths, np.int32))
    kv, first = runner.prefill(kv, prefill)
    batch = _batch(np.asarray(first), lengths, block_tables, remaining, stop_ids)
    toks, emitted = [], []
    for _ in range(2):
        kv, batch, t, e = runner.decode(kv, batch, CHUNK)
        toks.append(np.asarray(t))
        emitted.append(np.asarray(e))
    pages = [np.asarray(x) for x in jax.tree.leaves(kv)]  # per layer [K, P, S, D]
    return np.concatenate(toks, 1), np.concatenate(emitted, 1), pages, batch


@pytest.mark.parametrize("config", [tiny_config, openelm_like_config], ids=["gqa", "openelm"])
def test_contiguous_decode_equals_paged_decode(config):
    model = random_model(config(), seed=3)
    paged = ModelRunner(model, contiguous_decode=False)
    contiguous = ModelRunner(model, contiguous_decode=True)
    free = np.full((3, 1), -1)
    toks, _, _, _ = _run(paged, free, [100, 100, 100])
    # row 1 stops on the token it makes 4th (inside the first chunk), row 0 at a length
    # limit inside the second chunk
    stop_ids = np.array([[-1], [toks[1, 3]], [-1]])
    remaining = [CHUNK + 3, 100, 100]
    want_toks, want_emitted, want_pages, want_batch = _run(paged, stop_ids, remaining)
    got_toks, got_emitted, got_pages, got_batch = _run(contiguous, stop_ids, remaining)

    assert want_emitted[0].sum() == CHUNK + 3 and 0 < want_emitted[1].sum() <= 4
    assert not want_emitted[2].any()
    np.testing.assert_array_equal(got_emitted, want_emitted)
    np.testing.assert_array_equal(got_toks[got_emitted], want_toks[want_emitted])
    for key in ("tokens", "positions", "active", "remaining"):
        np.testing.assert_array_equal(
            np.asarray(getattr(got_batch, key)), np.asarray(getattr(want_batch, key))
        )
    # every page but the null page (which only the paged path scribbles on) is identical:
    # the chunk's tokens were written back, and nothing else was touched
    for got, want in zip(got_pages, want_pages):
        keep = np.arange(got.shape[1]) != NULL_PAGE
        np.testing.assert_allclose(got[:, keep], want[:, keep], rtol=1e-5, atol=1e-6)


def test_contiguous_decode_needs_one_device():
    model = random_model(tiny_config(), seed=0)
    mesh = shd.make_mesh("data:2")
    with pytest.raises(ValueError, match="one-device mesh"):
        ModelRunner(model, mesh, contiguous_decode=True)
    assert not ModelRunner(model, mesh).contiguous_decode  # off by default when sharded
    assert ModelRunner(model).contiguous_decode  # on by default on one CPU device


def test_batch_one_decode_on_out_in_weights_equals_the_model_layout():
    model = random_model(openelm_like_config(), seed=5)
    shapes = [v.shape for v in jax.tree.leaves(nnx.state(model))]
    plain = ModelRunner(model, out_in_weights=False)
    out_in = ModelRunner(model, out_in_weights=True)
    # the model keeps its layout; the runner's batch-1 copy is [out, in]
    assert [v.shape for v in jax.tree.leaves(nnx.state(model))] == shapes
    q = model.layers[2].attn.q[...]  # [d_model, heads, head_dim]
    copies = {x.shape for x in out_in._row_leaves}
    assert (q.shape[1] * q.shape[2], q.shape[0]) in copies
    results = []
    for runner in (plain, out_in):
        kv = runner.new_kv(8, PAGE)
        prefill = {
            "tokens": np.array([[5, 9, 13, 4, 7]], np.int32),
            "lengths": np.array([5], np.int32),
            "block_tables": np.array([[3, 1, 6, 0]], np.int32),
            "keys": np.zeros((1, 2), np.uint32),
            "temperature": np.zeros(1, np.float32),
            "top_k": np.zeros(1, np.int32),
            "top_p": np.ones(1, np.float32),
        }
        kv, first = runner.prefill(kv, prefill)
        batch = _batch(np.asarray(first), [5], prefill["block_tables"], [100], [[-1]])
        kv, _, toks, _ = runner.decode(kv, batch, CHUNK)
        results.append((np.asarray(toks), [np.asarray(x) for x in kv.k]))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    for got, want in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_out_in_copy_defaults(monkeypatch):
    model = random_model(tiny_config(), seed=0)
    assert ModelRunner(model).out_in_weights  # one CPU device, a small copy
    assert not ModelRunner(model, shd.make_mesh("data:2")).out_in_weights
    with pytest.raises(ValueError, match="out_in_weights needs a one-device mesh"):
        ModelRunner(model, shd.make_mesh("data:2"), out_in_weights=True)
    monkeypatch.setattr(strategy_module, "OUT_IN_MAX_BYTES", 1000)
    assert not ModelRunner(model).out_in_weights  # the copy would be too large


def test_decode_through_the_pallas_kernel_equals_the_xla_path(monkeypatch):
    """The GPU paged-attention kernel (in the Pallas interpreter) inside the runner's decode
    loop: same tokens, same stops, same pages as the XLA path."""
    from jaxserve.models.attention import PagedAttention

    kernel_calls = []
    real = PagedAttention._kernel

    def counted(self, *args):
        out = real(self, *args)
        kernel_calls.append(out is not None)
        return out

    monkeypatch.setattr(PagedAttention, "_kernel", counted)
    model = random_model(tiny_config(head_dim=16), seed=4)
    xla = ModelRunner(model, contiguous_decode=False, out_in_weights=False, kernel="xla")
    pallas = ModelRunner(
        model, contiguous_decode=False, out_in_weights=False, kernel="pallas_gpu", interpret=True
    )
    assert pallas.strategy.attention.kernel == "pallas_gpu"
    free = np.full((3, 1), -1)
    toks, _, _, _ = _run(xla, free, [100, 100, 100])
    stop_ids = np.array([[-1], [toks[1, 3]], [-1]])
    want_toks, want_emitted, want_pages, _ = _run(xla, stop_ids, [CHUNK + 3, 100, 100])
    got_toks, got_emitted, got_pages, _ = _run(pallas, stop_ids, [CHUNK + 3, 100, 100])
    assert kernel_calls and all(kernel_calls)  # traced through the kernel, no fallback
    np.testing.assert_array_equal(got_emitted, want_emitted)
    np.testing.assert_array_equal(got_toks[got_emitted], want_toks[want_emitted])
    for got, want in zip(got_pages, want_pages):  # the null page takes padding writes
        np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-5)
