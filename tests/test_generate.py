"""Generation: greedy parity with PyTorch, sampling rules, stops, batching, compiles, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config

from jaxserve.generate import Generator, parse_ids
from jaxserve.runner import CompileCounter
from jaxserve.sampling import SamplingParams, row_keys, sample
from jaxserve.tokenizer import load_default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prompts(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    rs = np.random.RandomState(seed)
    return [[int(t) for t in rs.randint(3, vocab, n)] for n in lengths]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_generation_matches_transformers(arch, tmp_path):
    torch = pytest.importorskip(
        "torch", reason="greedy parity needs the PyTorch reference: pip install -e '.[test]'"
    )
    import transformers

    cls, cfg_cls = {
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config),
    }[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(
        vocab_size=211,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
    )
    ref_model = cls(cfg).eval()
    with torch.no_grad():
        for p in ref_model.parameters():
            p.normal_(0, 0.3)
    ref_model.save_pretrained(tmp_path)
    from jaxserve.models.weights import load_hf

    gen = Generator(load_hf(tmp_path), page_size=8, chunk=8)
    prompts = _prompts(211, (1, 6, 19))
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=32))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ids = ref_model.generate(
                torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False
            )[0, len(prompt) :].tolist()
        assert out.token_ids == ids
        assert out.finish_reason == "length"


def test_batch_of_different_lengths_equals_one_by_one():
    gen = Generator(random_model(tiny_config()), page_size=4, chunk=4)
    prompts = _prompts(97, (2, 11, 5, 7, 3))
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    together = gen.generate(prompts, params)
    # each row's key is seed + row index: reproduce that row alone with its own seed
    for i, p in enumerate(prompts):
        alone = gen.generate(
            [p], SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7 + i)
        )
        assert alone[0].token_ids == together[i].token_ids


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    gen = Generator(random_model(tiny_config()), page_size=4, chunk=4)
    prompts = _prompts(97, (4, 6))
    a = gen.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, seed=1))
    b = gen.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, seed=1))
    c = gen.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, seed=2))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    greedy = gen.generate(prompts, SamplingParams(max_new_tokens=16))
    top1 = gen.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, top_k=1))
    assert [x.token_ids for x in top1] == [x.token_ids for x in greedy]


def test_sample_respects_top_k_top_p_and_greedy_rows():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4))
    n = 400
    seen = {0: set(), 1: set(), 2: set(), 3: set()}
    temperature = jnp.array([1.0, 1.0, 1.0, 0.0])
    top_k = jnp.array([2, 0, 0, 0])
    top_p = jnp.array([1.0, 0.7, 1.0, 1.0])  # row 1: 0.5 + 0.3 reaches 0.7 -> tokens {0, 1}
    keys = row_keys(jnp.arange(4))
    draw = jax.jit(lambda pos: sample(logits, keys, pos, temperature, top_k, top_p))
    counts = np.zeros(4)
    for step in range(n):
        toks = np.asarray(draw(jnp.full((4,), step)))
        for row, t in enumerate(toks):
            seen[row].add(int(t))
        counts[toks[2]] += 1
    assert seen[0] == {0, 1} and seen[1] == {0, 1} and seen[3] == {0}
    assert seen[2] == {0, 1, 2, 3}
    np.testing.assert_allclose(counts / n, [0.5, 0.3, 0.15, 0.05], atol=0.07)


def test_greedy_pick_is_argmax_with_its_tie_and_nan_rules():
    rs = np.random.RandomState(0)
    logits = rs.randn(6, 300).astype(np.float32)
    logits[1, [40, 7, 250]] = 9.0  # a tie: the first index wins
    logits[2, 77] = np.nan  # a NaN counts as the maximum
    logits[3, [5, 90]] = np.nan
    logits[4] = -np.inf
    logits[5, 299] = np.inf
    zeros = jnp.zeros(6)
    got = sample(jnp.asarray(logits), jnp.zeros((6, 2), jnp.uint32), zeros, zeros, zeros, zeros)
    want = np.argmax(logits, axis=-1)
    assert list(want[:4]) == [want[0], 7, 77, 5]
    np.testing.assert_array_equal(np.asarray(got), want)


def test_sample_lands_on_a_kept_token_at_the_top_of_the_uniform(monkeypatch):
    """A uniform number at (or rounded up to) the whole kept mass still picks a kept token."""
    import jaxserve.sampling as sampling

    monkeypatch.setattr(sampling, "uniform", lambda keys, pos: jnp.ones(keys.shape[0]))
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2))
    ones = jnp.ones(2)
    toks = sampling.sample(
        logits,
        row_keys(jnp.arange(2)),
        jnp.zeros(2, jnp.int32),
        ones,
        jnp.array([2, 0]),
        jnp.array([1.0, 0.7]),
    )
    assert list(np.asarray(toks)) == [1, 1]  # the last kept token of each row


def test_sampling_params_validation():
    for bad in (
        dict(max_new_tokens=0),
        dict(temperature=-1),
        dict(top_k=-1),
        dict(top_p=0),
        dict(top_p=1.5),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)


def test_stop_token_ids_end_generation():
    gen = Generator(random_model(tiny_config()), page_size=4, chunk=4)
    prompts = _prompts(97, (5, 8))
    free = gen.generate(prompts, SamplingParams(max_new_tokens=20))
    stop = free[0].token_ids[6]
    first = free[0].token_ids.index(stop)
    out = gen.generate(prompts, SamplingParams(max_new_tokens=20, stop_token_ids=(stop,)))
    assert out[0].token_ids == free[0].token_ids[: first + 1]
    assert out[0].finish_reason == "stop"
    other = free[1].token_ids
    expect = other[: other.index(stop) + 1] if stop in other else other
    assert out[1].token_ids == expect


def test_stop_strings_cut_text():
    tok = load_default()
    config = tiny_config(vocab_size=tok.vocab_size)
    gen = Generator(random_model(config, seed=5), tokenizer=tok, page_size=4, chunk=4)
    free = gen.generate(["def f(x):"], SamplingParams(max_new_tokens=24, temperature=1.0))[0]
    text = free.text
    assert text and len(text) > 6
    stop = text[3:6]
    cut = text.find(stop)
    out = gen.generate(
        ["def f(x):"], SamplingParams(max_new_tokens=24, temperature=1.0, stop_strings=(stop,))
    )[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:cut]
    assert out.token_ids == free.token_ids[: len(out.token_ids)]
    assert stop in tok.decode(out.token_ids) and stop not in tok.decode(out.token_ids[:-1])


def test_no_recompilation_after_warmup():
    gen = Generator(random_model(tiny_config(max_seq_len=512)), page_size=16, chunk=16)
    prompts = _prompts(97, (9, 30))
    params = SamplingParams(max_new_tokens=200)
    gen.generate(prompts, params)
    before = CompileCounter.count()
    out = gen.generate(_prompts(97, (12, 17), seed=1), params)
    assert CompileCounter.count() == before
    assert all(len(o.token_ids) == 200 for o in out)


def test_input_errors():
    gen = Generator(random_model(tiny_config(max_seq_len=64)), page_size=4, chunk=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        gen.generate([[5] * 60], SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.generate([[5, 97]], SamplingParams())
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="tokenizer"):
        gen.generate(["text"], SamplingParams())
    with pytest.raises(ValueError, match="--prompt_ids"):
        parse_ids("1,x", "--prompt_ids")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.run(
        [sys.executable, "-m", "experiments.generate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_json(tmp_path):
    out = tmp_path / "gen.json"
    r = _cli(
        "--preset=tiny",
        "--prompt=def f(x):",
        "--prompt_ids=5,6,7",
        "--max_new_tokens=5",
        "--mesh=data:2,model:2",
        f"--output_json={out}",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["flags"]["mesh"] == "data:2,model:2"
    assert data["environment"]["jax"] == jax.__version__
    first, second = data["completions"]
    assert first["prompt"] == "def f(x):" and second["prompt_ids"] == [5, 6, 7]
    assert 1 <= len(first["token_ids"]) <= 5 and isinstance(first["text"], str)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--preset=tiny", "--prompt_ids=1,a"], "--prompt_ids"),
        (["--preset=nope", "--prompt=a"], "--preset"),
        (["--preset=tiny", "--prompt=a", "--mesh=data:64"], "--mesh"),
        (["--checkpoint=/no/such/dir", "--prompt=a"], "--checkpoint"),
        (["--preset=tiny", "--prompt=a", "--top_p=2"], "--top_p"),
    ],
)
def test_cli_usage_errors_name_the_flag(args, flag):
    r = _cli(*args)
    assert r.returncode != 0
    assert flag in r.stderr
