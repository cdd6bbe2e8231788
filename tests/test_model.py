"""The paged-attention path of the Decoder against its full-sequence path, and KV page hygiene."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx

from jaxserve.kvcache.pages import NULL_PAGE, init_pages
from jaxserve.models.transformer import Decoder

PAGE_SIZE = 4
NUM_PAGES = 24
PROMPT_LENS = (5, 9, 2)
DECODE_STEPS = 4
# Scattered, non-contiguous pages; unused table entries point at the null page. Pages
# 1, 4, 6, 8, 10, 12, 14, 16, 19, 21, 22, 23 are never handed out.
BLOCK_TABLES = np.array(
    [[7, 2, 15, 11, 0], [3, 20, 9, 5, 0], [13, 18, 0, 0, 0]],
    np.int32,
)
ATOL = 1e-5


def openelm_like_config():
    """Per-layer heads and kv heads (the first layer narrower than the last), qk-norm."""
    return tiny_config(
        name="test-openelm",
        num_layers=3,
        num_heads=(2, 4, 6),
        num_kv_heads=(1, 2, 3),
        ffn_dim=(48, 64, 96),
        qk_norm=True,
        architecture="openelm",
        rms_eps=1e-6,
    )


CONFIGS = {"gqa": tiny_config, "openelm": openelm_like_config}


def _jitted(model: Decoder):
    """Pure jitted forward passes over the split state (as serving runs it)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def full(state, tokens, positions, logits_index=None):
        return nnx.merge(graphdef, state)(tokens, positions, logits_index=logits_index)

    @functools.partial(jax.jit, static_argnames="prefix")
    def paged(state, tokens, positions, kv, block_tables, seq_lens, prefix, logits_index=None):
        m = nnx.merge(graphdef, state)
        return m(
            tokens,
            positions,
            kv=kv,
            block_tables=block_tables,
            seq_lens=seq_lens,
            prefix=prefix,
            logits_index=logits_index,
        )

    return functools.partial(full, state), functools.partial(paged, state)


def _setup(name: str, seed: int = 0):
    config = CONFIGS[name]()
    model = random_model(config, seed=seed)
    rng = np.random.default_rng(seed)
    total = max(PROMPT_LENS) + DECODE_STEPS
    # Every sequence's full token stream: prompt then the tokens fed at each decode step.
    seqs = rng.integers(3, config.vocab_size, (len(PROMPT_LENS), total)).astype(np.int32)
    return config, model, seqs


def _full_logits(full, seqs: np.ndarray) -> np.ndarray:
    b, t = seqs.shape
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    return np.asarray(full(jnp.asarray(seqs), jnp.asarray(positions)))


def _prefill_inputs(seqs: np.ndarray, rng: np.random.Generator):
    """Right-padded prompts; the padding is garbage tokens, which must not matter."""
    b, t = len(PROMPT_LENS), max(PROMPT_LENS)
    tokens = rng.integers(3, 50, (b, t)).astype(np.int32)
    for i, n in enumerate(PROMPT_LENS):
        tokens[i, :n] = seqs[i, :n]
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    return tokens, positions, np.array(PROMPT_LENS, np.int32)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prefix", [True, False])
def test_paged_prefill_and_decode_match_full_sequence(name, prefix):
    config, model, seqs = _setup(name)
    full, paged = _jitted(model)
    want = _full_logits(full, seqs)
    assert np.abs(want).max() > 1.0  # random weights: logits far from uniform

    kv = init_pages(config, NUM_PAGES, PAGE_SIZE)
    tokens, positions, lens = _prefill_inputs(seqs, np.random.default_rng(1))
    bt = jnp.asarray(BLOCK_TABLES)
    logits, kv = paged(tokens, positions, kv, bt, jnp.asarray(lens), prefix)
    logits = np.asarray(logits)
    for i, n in enumerate(PROMPT_LENS):
        np.testing.assert_allclose(logits[i, :n], want[i, :n], atol=ATOL, rtol=0)

    for step in range(DECODE_STEPS):
        pos = lens + step  # each sequence's next position
        tok = seqs[np.arange(len(pos)), pos][:, None]
        logits, kv = paged(tok, pos[:, None], kv, bt, jnp.asarray(pos + 1), True)
        assert logits.shape == (len(pos), 1, config.vocab_size)
        np.testing.assert_allclose(
            np.asarray(logits)[:, 0], want[np.arange(len(pos)), pos], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_goes_to_null_page_and_sequences_keep_to_their_pages(name):
    config, model, seqs = _setup(name, seed=3)
    _, paged = _jitted(model)
    tokens, positions, lens = _prefill_inputs(seqs, np.random.default_rng(2))
    bt = jnp.asarray(BLOCK_TABLES)
    _, kv = paged(tokens, positions, init_pages(config, NUM_PAGES, PAGE_SIZE), bt, lens, False)
    # per layer, pages first: [P, S, K_l, D]
    ks = [np.asarray(x).transpose(1, 2, 0, 3) for x in kv.k]
    vs = [np.asarray(x).transpose(1, 2, 0, 3) for x in kv.v]
    # Each layer's pages hold exactly its own KV heads.
    assert [x.shape[2] for x in ks] == list(config.num_kv_heads)

    for k, v in zip(ks, vs):
        # The padding writes all land in the null page.
        assert np.abs(k[NULL_PAGE]).max() > 0 and np.abs(v[NULL_PAGE]).max() > 0
        # Pages nobody owns are untouched.
        owned = set(BLOCK_TABLES.ravel().tolist()) - {NULL_PAGE}
        free = sorted(set(range(NUM_PAGES)) - owned - {NULL_PAGE})
        assert free and not k[free].any() and not v[free].any()

    for i, n in enumerate(PROMPT_LENS):
        pages = [p for p in BLOCK_TABLES[i] if p != NULL_PAGE]
        alone = init_pages(config, NUM_PAGES, PAGE_SIZE)
        _, alone = paged(
            tokens[i : i + 1], positions[i : i + 1], alone, bt[i : i + 1], lens[i : i + 1], False
        )
        for layer, (k, v) in enumerate(zip(ks, vs)):
            # Slot by slot: written exactly up to the sequence's length, zero after.
            seq = k[pages].reshape(-1, *k.shape[2:])
            assert (np.abs(seq[:n]).sum(axis=(1, 2)) > 0).all()
            assert not seq[n:].any()
            # The same sequence prefilled alone writes the same values into its pages.
            for got, ref in ((k, alone.k[layer]), (v, alone.v[layer])):
                ref = np.asarray(ref).transpose(1, 2, 0, 3)
                np.testing.assert_allclose(got[pages], ref[pages], atol=1e-6)


@pytest.mark.parametrize("paged_path", [False, True])
def test_logits_index_selects_rows(paged_path):
    config, model, seqs = _setup("gqa", seed=5)
    full, paged = _jitted(model)
    tokens, positions, lens = _prefill_inputs(seqs, np.random.default_rng(4))
    idx = jnp.asarray(lens - 1)
    bt = jnp.asarray(BLOCK_TABLES)
    if paged_path:
        kv = init_pages(config, NUM_PAGES, PAGE_SIZE)
        every, _ = paged(tokens, positions, kv, bt, lens, True)
        picked, _ = paged(tokens, positions, kv, bt, lens, True, logits_index=idx)
    else:
        every = full(tokens, positions)
        picked = full(tokens, positions, logits_index=idx)
    assert picked.shape == (len(PROMPT_LENS), config.vocab_size)
    rows = np.asarray(every)[np.arange(len(PROMPT_LENS)), lens - 1]
    np.testing.assert_allclose(np.asarray(picked), rows, atol=ATOL, rtol=0)
    # Different rows really are different (so picking the wrong one would fail).
    assert np.abs(rows[0] - np.asarray(every)[0, 0]).max() > 1e-3
