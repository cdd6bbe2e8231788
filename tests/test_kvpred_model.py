"""KV Prediction model paths: auxiliary construction, predictor, training and inference paths.

The reference is the paper's sanity check: with A = B and an identity predictor, the predicted
cache *is* the base's cache, so the KVP model must give exactly the base's logits and tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, randomize, tiny_config
from flax import nnx

from jaxserve.kvcache.pages import init_pages
from jaxserve.runner import ModelRunner
from jaxserve.sharding import make_mesh
from kvpred.aux import build_aux, lp_config, parse_aux_spec
from kvpred.model import KVPModel, trainable_filter
from kvpred.predictor import KVPredictor

PAGE = 4


def identity_kvp(base):
    """A = a copy of B, every layer mapped to itself, identity predictor."""
    aux = nnx.clone(base)
    pred = KVPredictor(
        aux.config, base.config, list(range(base.config.num_layers)), rngs=nnx.Rngs(0)
    )
    return KVPModel(base, aux, pred)


def prefill_batch(prompts, num_pages_per_seq=8):
    b = len(prompts)
    t = max(len(p) for p in prompts)
    tokens = np.zeros((b, t), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    tables = 1 + np.arange(b * num_pages_per_seq, dtype=np.int32).reshape(b, -1)
    keys = np.stack([np.array([0, i], np.uint32) for i in range(b)])
    return {
        "tokens": tokens,
        "lengths": lengths,
        "block_tables": tables,
        "keys": keys,
        "temperature": np.zeros(b, np.float32),
        "top_k": np.zeros(b, np.int32),
        "top_p": np.ones(b, np.float32),
    }


PROMPTS = [[5, 9, 13, 2, 40, 41, 7], [3, 8], [60, 61, 62, 63, 64, 65, 66, 67, 68, 11, 12]]


@pytest.mark.parametrize("qk_norm", [False, True])
def test_identity_kvp_equals_base_prefill(qk_norm):
    base = random_model(tiny_config(qk_norm=qk_norm, num_layers=3))
    kvp = identity_kvp(base)
    batch = prefill_batch(PROMPTS)
    num_pages = 1 + batch["block_tables"].size
    args = (batch["tokens"], batch["lengths"])
    bt = batch["block_tables"]

    def pages():
        return init_pages(base.config, num_pages, PAGE)

    ref_logits, ref_kv = base.prefill_paged(*args, pages(), bt)
    logits, kv = kvp.prefill_paged(*args, pages(), bt)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
    # the predicted cache is the real one: same values in the same slots (page 0, the null
    # page, takes padding writes and holds nothing)
    for got, want in zip(kv.k + kv.v, ref_kv.k + ref_kv.v):  # per layer [K, P, S, D]
        np.testing.assert_allclose(np.asarray(got)[:, 1:], np.asarray(want)[:, 1:], atol=1e-5)
        assert got.dtype == want.dtype and got.shape == want.shape


def test_identity_kvp_greedy_tokens_and_cache_shardings_match_base():
    """Through the serving runner on a data x model mesh: same tokens, same cache layout."""
    config = tiny_config(num_layers=2, num_kv_heads=4, num_heads=8, head_dim=8)
    base = random_model(config, seed=3)
    mesh = make_mesh({"data": 2, "model": 2}, jax.devices()[:4])
    runners = {"base": ModelRunner(base, mesh), "kvp": ModelRunner(identity_kvp(base), mesh)}
    prompts = PROMPTS + [[4, 4, 4, 5]]
    out = {}
    for name, runner in runners.items():
        batch = prefill_batch(prompts)
        kv = runner.new_kv(1 + batch["block_tables"].size, PAGE)
        kv, first = runner.prefill(kv, runner.put_batch(batch))
        b = len(prompts)
        dec = {
            "tokens": np.asarray(first),
            "positions": batch["lengths"].copy(),
            "block_tables": batch["block_tables"],
            "active": np.ones(b, bool),
            "remaining": np.full(b, 12, np.int32),
            "stop_ids": np.full((b, 1), -1, np.int32),
            "keys": batch["keys"],
            "temperature": batch["temperature"],
            "top_k": batch["top_k"],
            "top_p": batch["top_p"],
        }
        kv2, _, toks, _ = runner.decode(kv, runner.put_batch(dec), 12)
        out[name] = (np.asarray(first), np.asarray(toks), kv2)
    np.testing.assert_array_equal(out["kvp"][0], out["base"][0])
    np.testing.assert_array_equal(out["kvp"][1], out["base"][1])
    kb, kk = out["base"][2], out["kvp"][2]
    for got, want in zip(kk.k + kk.v, kb.k + kb.v):
        assert got.sharding == want.sharding
        assert got.shape == want.shape and got.dtype == want.dtype


def test_kvp_prefill_uses_prediction_for_prompt_and_base_for_last_token():
    """With a zero predictor the prompt[:-1] slots hold k = RoPE(0) = 0, v = 0 (the bias),
    while the last prompt token's slot holds the base's own k, v: in layer 0 exactly the real
    prefill's (it sees only the token), in layer 1 not (it attended to the zero cache)."""
    config = tiny_config(num_layers=2)
    base = random_model(config, seed=1)
    kvp = identity_kvp(base)
    for lin in list(kvp.predictor.k) + list(kvp.predictor.v):
        lin.w.set_value(jnp.zeros_like(lin.w[...]))
    batch = prefill_batch([PROMPTS[0]])
    pages = init_pages(config, 9, PAGE)
    _, kv = kvp.prefill_paged(batch["tokens"], batch["lengths"], pages, batch["block_tables"])
    _, ref = base.prefill_paged(batch["tokens"], batch["lengths"], pages, batch["block_tables"])
    n = len(PROMPTS[0])
    # pages 1, 2 of every layer as [L, 2 * PAGE, K, D]
    flat = lambda x: np.stack(x)[:, :, 1:3].transpose(0, 2, 3, 1, 4).reshape(2, 2 * PAGE, 2, 12)  # noqa: E731
    np.testing.assert_array_equal(flat(kv.v)[:, : n - 1], 0.0)
    np.testing.assert_array_equal(flat(kv.k)[:, : n - 1], 0.0)
    np.testing.assert_allclose(flat(kv.k)[0, n - 1], flat(ref.k)[0, n - 1], rtol=1e-6)
    np.testing.assert_allclose(flat(kv.v)[0, n - 1], flat(ref.v)[0, n - 1], rtol=1e-6)
    assert np.abs(flat(kv.k)[1, n - 1] - flat(ref.k)[1, n - 1]).max() > 1e-3


def test_train_forward_identity_matches_base_and_targets():
    base = random_model(tiny_config(num_layers=2), seed=2)
    kvp = identity_kvp(base)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 10)), jnp.int32)
    out = kvp.train_forward(tokens)
    positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
    ref = base(tokens, positions)
    np.testing.assert_allclose(out["logits_b"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logits_a"], ref, rtol=1e-5, atol=1e-5)
    for (pk, pv), (tk, tv) in zip(out["pred_kv"], out["target_kv"]):
        np.testing.assert_allclose(pk, tk, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(pv, tv, rtol=1e-6, atol=1e-6)


def test_train_forward_with_a_predicted_prefix_is_what_generation_sees():
    """`predicted_until=L-1`: B reads the predicted cache for prompt[:-1] and its own from
    there on, so its logits are the serving path's: `prefill_paged` on the L-token prompt for
    position L-1, then teacher-forced decode steps on B alone for the positions after it."""
    base = random_model(tiny_config(num_layers=2), seed=4)
    aux = build_aux("lp:0.5", base)
    pred = KVPredictor(aux.model.config, base.config, aux.layer_map, rngs=nnx.Rngs(0))
    kvp = KVPModel(base, aux.model, pred)
    t = 11
    tokens = np.random.default_rng(1).integers(0, 97, (2, t)).astype(np.int32)
    cuts = [6, 3]  # prompt length per row
    out = kvp.train_forward(jnp.asarray(tokens), jnp.asarray([c - 1 for c in cuts], jnp.int32))
    mixed = np.asarray(out["logits_b"])
    everywhere = np.asarray(kvp.train_forward(jnp.asarray(tokens))["logits_b"])
    for row, cut in enumerate(cuts):
        batch = prefill_batch([tokens[row, :cut].tolist()])
        bt = batch["block_tables"]
        kv = init_pages(base.config, 1 + bt.size, PAGE)
        logits, kv = kvp.prefill_paged(batch["tokens"], batch["lengths"], kv, bt)
        served = [np.asarray(logits)[0]]
        for pos in range(cut, t):
            logits, kv = base(
                jnp.asarray(tokens[row : row + 1, pos : pos + 1]),
                jnp.full((1, 1), pos, jnp.int32),
                kv=kv,
                block_tables=bt,
                seq_lens=jnp.asarray([pos + 1], jnp.int32),
                prefix=True,
                logits_index=jnp.zeros((1,), jnp.int32),
            )
            served.append(np.asarray(logits)[0])
        np.testing.assert_allclose(mixed[row, cut - 1 :], np.stack(served), rtol=2e-5, atol=2e-5)
        # before the cut B reads the predicted cache alone, after it no longer does
        np.testing.assert_allclose(mixed[row, : cut - 1], everywhere[row, : cut - 1], atol=1e-6)
        assert np.abs(mixed[row, cut:] - everywhere[row, cut:]).max() > 1e-3


def test_gradients_reach_aux_and_predictor_through_the_base_only():
    base = random_model(tiny_config(num_layers=2), seed=2)
    aux = build_aux("lp:0.5", base)
    pred = KVPredictor(aux.model.config, base.config, aux.layer_map, rngs=nnx.Rngs(0))
    kvp = KVPModel(base, aux.model, pred)
    graphdef, trainable, frozen = nnx.split(kvp, trainable_filter(), ...)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 8)), jnp.int32)

    def ce_b(trainable):
        m = nnx.merge(graphdef, trainable, frozen)
        logits = m.train_forward(tokens)["logits_b"]
        picked = jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)

    grads = jax.grad(ce_b)(trainable)
    paths = [p for p, _ in nnx.to_flat_state(grads)]
    assert paths and all(p[0] in ("aux", "predictor") for p in paths)
    norms = {p[0]: 0.0 for p in paths}
    for p, g in nnx.to_flat_state(grads):
        norms[p[0]] += float(jnp.sum(g.get_value() ** 2))
    # CE_B depends on A and P only through the base's attention to the predicted cache
    assert norms["aux"] > 0 and norms["predictor"] > 0
    assert all(p[0] == "base" for p, _ in nnx.to_flat_state(nnx.state(frozen, nnx.Param)))


def test_lp_aux_copies_kept_layers_and_predictor_starts_at_identity():
    config = tiny_config(num_layers=4, num_heads=(4, 4, 2, 2), num_kv_heads=(2, 2, 1, 1))
    base = random_model(config)
    aux = build_aux("lp:0.5", base)
    assert aux.kept_layers == [0, 2] and aux.layer_map == [0, 0, 1, 1]
    assert aux.model.config == lp_config(config, 0.5)
    np.testing.assert_array_equal(aux.model.layers[1].attn.q[...], base.layers[2].attn.q[...])
    aux.model.layers[1].attn.q.set_value(aux.model.layers[1].attn.q[...] * 0)
    assert float(jnp.abs(base.layers[2].attn.q[...]).sum()) > 0  # a copy, not shared
    pred = KVPredictor(aux.model.config, config, aux.layer_map, rngs=nnx.Rngs(0))
    # base layer 0 <- aux layer 0 (same width: identity); base layer 2 <- aux layer 1 (identity)
    np.testing.assert_array_equal(pred.k[0].w[...], np.eye(24))
    np.testing.assert_array_equal(pred.v[2].w[...], np.eye(12))
    # base layer 1 (2 kv heads) <- aux layer 0 (2 kv heads): identity; widths differ nowhere
    assert pred.k[3].w.shape == (12, 12)


def test_c_aux_from_preset_and_errors(caplog):
    base = random_model(tiny_config(vocab_size=4096, num_layers=4))
    aux = build_aux("c:tiny", base)
    assert aux.kind == "c" and aux.layer_map == [0, 1, 2, 3]
    # a preset the package ships weights for comes with them (like resolve_model)
    from jaxserve.experiment import resolve_model

    shipped, _, _ = resolve_model(None, "tiny-aux")
    got = build_aux("c:tiny-aux", base).model
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(nnx.state(got)), jax.tree.leaves(nnx.state(shipped)))
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert build_aux("c:tiny-aux-m", base).model.config.d_model == 96  # none shipped
    assert "no shipped weights" in caplog.text and "tiny-aux-m" in caplog.text
    aux = build_aux("c:tiny", base, layer_map=[0, 0, 0, 3])
    assert aux.layer_map == [0, 0, 0, 3]
    pred = KVPredictor(aux.model.config, base.config, aux.layer_map, rngs=nnx.Rngs(0))
    assert pred.k[0].w.shape == (2 * 32, 2 * 12)  # tiny: 2 kv heads of 32 -> 2 of 12
    with pytest.raises(ValueError, match="vocabulary"):
        build_aux("c:small", base)
    with pytest.raises(ValueError, match="not lp:FRACTION"):
        parse_aux_spec("lp")
    with pytest.raises(ValueError, match="fraction in"):
        build_aux("lp:0.3", base)
    with pytest.raises(ValueError, match="neither a preset"):
        build_aux("c:/no/such/dir", base)
    with pytest.raises(ValueError, match="layer map has 3 entries"):
        build_aux("lp:0.5", base, layer_map=[0, 0, 1])


def test_shipped_tiny_and_tiny_aux_are_the_trained_base_and_auxiliary():
    """The embedded weights were trained on the CLIs' default knowledge base: `tiny` answers
    it, the far smaller `tiny-aux` (the C auxiliary) mostly cannot."""
    from jaxserve.experiment import resolve_model
    from kvpred import data as kd
    from kvpred import evaluate as ev
    from kvpred import recipes

    examples = kd.KnowledgeBase(recipes.DEFAULT_KB_ENTITIES, 0).qa_examples("eval")[:64]
    base, tokenizer, source = resolve_model(None, "tiny")
    aux, _, aux_source = resolve_model(None, "tiny-aux")
    assert "embedded" in source and "embedded" in aux_source
    assert ev.qa_accuracy(base, tokenizer, examples) >= 0.9
    assert ev.qa_accuracy(aux, tokenizer, examples) < 0.3


def test_shipped_tiny_solves_held_out_code_problems_and_tiny_aux_fewer():
    """The embedded weights were also trained on the synthetic code task's train split: the
    base writes passing solutions for held-out compositions it never saw, greedy, out of the
    box; the C auxiliary, a quarter of its size, for fewer of them."""
    from jaxserve.experiment import resolve_model
    from kvpred.data import code_task as ct
    from kvpred.evaluate import humaneval_completions
    from kvpred.tasks import evaluate

    problems = ct.make_problems("heldout", 24)
    solved = {}
    for preset in ("tiny", "tiny-aux"):
        model, tokenizer, _ = resolve_model(None, preset)
        res = evaluate(problems, humaneval_completions(model, tokenizer, problems))
        solved[preset] = res["pass_at_k"]["pass@1"]
    assert solved["tiny"] >= 0.5 and solved["tiny-aux"] < solved["tiny"], solved


def _token_batches(n, b=2, t=12, vocab=97, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.ones((b, t), np.float32)
        mask[1, t - 3 :] = 0  # padding the fit must ignore
        out.append({"inputs": rng.integers(3, vocab, (b, t)).astype(np.int32), "input_mask": mask})
    return out


def test_least_squares_init_recovers_an_exact_map_and_matches_numpy():
    from kvpred.predictor import fit_least_squares

    base = random_model(tiny_config(num_layers=2))
    # A = B with a scrambled predictor: the best linear map is the identity, error ~0
    kvp = identity_kvp(base)
    randomize(kvp.predictor, seed=3)
    batches = _token_batches(3)
    err = fit_least_squares(kvp, batches, ridge=1e-9)
    assert max(err.values()) < 1e-3
    out = kvp.train_forward(jnp.asarray(batches[0]["inputs"]))
    for (pk, pv), (tk, tv) in zip(out["pred_kv"], out["target_kv"]):
        np.testing.assert_allclose(pk[0], tk[0], atol=2e-3)
        np.testing.assert_allclose(pv[0], tv[0], atol=2e-3)

    # a narrower C auxiliary: the fit is numpy's least squares on the real tokens
    aux = random_model(tiny_config(d_model=32, num_heads=2, num_kv_heads=1, num_layers=1), 5)
    pred = KVPredictor(aux.config, base.config, [0, 0], rngs=nnx.Rngs(0))
    kvp = KVPModel(base, aux, pred)
    fit_least_squares(kvp, batches, ridge=0.0)
    xs, ys = [], []
    for batch in batches:
        tokens = jnp.asarray(batch["inputs"])
        pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        _, akv = aux(tokens, pos, return_kv=True)
        _, bkv = base(tokens, pos, return_kv=True)
        m = batch["input_mask"].reshape(-1) > 0
        xs.append(np.asarray(akv[0][1]).reshape(m.size, -1)[m])
        ys.append(np.asarray(bkv[1][1]).reshape(m.size, -1)[m])  # base layer 1's V
    x = np.concatenate([np.concatenate(xs), np.ones((sum(len(a) for a in xs), 1))], axis=1)
    want = np.linalg.lstsq(x, np.concatenate(ys), rcond=None)[0]
    np.testing.assert_allclose(kvp.predictor.v[1].w[...], want[:-1], atol=1e-4)
    np.testing.assert_allclose(kvp.predictor.v[1].b[...], want[-1], atol=1e-4)
