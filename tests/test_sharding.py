"""Sharding over 8 simulated CPU devices: placement, equality with one device, collectives."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from conftest import random_model, tiny_config
from jax.sharding import PartitionSpec as P

from jaxserve import sharding as shd
from jaxserve.batch import DecodeBatch
from jaxserve.generate import Generator
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams, sampling_arrays


def test_parse_mesh_and_errors():
    assert shd.parse_mesh("data:2,model:4") == {"data": 2, "model": 4}
    assert shd.parse_mesh("model:8") == {"model": 8}
    for bad, word in [
        ("data:0", "positive"),
        ("data", "NAME:SIZE"),
        ("pipe:2", "unknown"),
        ("model:2,model:2", "twice"),
        ("", "empty"),
    ]:
        with pytest.raises(ValueError, match=word):
            shd.parse_mesh(bad)
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh("data:4,model:4")


def test_logical_rules_shard_only_divisible_dims():
    mesh = shd.make_mesh("data:2,model:4")
    assert shd.logical_to_spec(("embed", "heads", "head_dim"), (48, 8, 12), mesh) == P(
        None, "model", None
    )
    # 2 kv heads cannot be split 4 ways: replicated
    assert shd.logical_to_spec(("embed", "kv_heads", "head_dim"), (48, 2, 12), mesh) == P(
        None, None, None
    )
    assert shd.logical_to_spec(("batch", None), (6, 3), mesh) == P("data", None)
    assert shd.logical_to_spec(("batch", None), (3, 3), mesh) == P(None, None)


def _runner_params(runner: ModelRunner) -> dict:
    from flax import nnx

    return {p: v[...] for p, v in nnx.to_flat_state(runner.state)}


def test_parameters_and_pages_are_placed_by_rules():
    config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=6)
    runner = ModelRunner(random_model(config), shd.make_mesh("data:2,model:4"))
    params = _runner_params(runner)
    q = params[("layers", 0, "attn", "q")]
    assert q.sharding.spec == P(None, "model", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (48, 2, 6)
    assert params[("layers", 0, "mlp", "down")].sharding.spec == P("model", None)
    assert params[("embed",)].sharding.spec == P(None, None)  # vocab 97: not divisible by 4
    kv = runner.new_kv(num_pages=9, page_size=4)
    assert all(x.sharding.spec == P("model", None, None, None) for x in kv.k + kv.v)


@pytest.mark.parametrize("mesh_spec", ["data:2,model:4", "data:8", "model:2"])
def test_sharded_generation_equals_unsharded(mesh_spec):
    config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=6, vocab_size=128)
    model = random_model(config, seed=3)
    rs = np.random.RandomState(0)
    prompts = [list(rs.randint(3, 128, n)) for n in (3, 9, 17, 5)]
    params = SamplingParams(max_new_tokens=12)
    ref = Generator(model, page_size=4, chunk=4).generate(prompts, params)
    out = Generator(model, mesh=shd.make_mesh(mesh_spec), page_size=4, chunk=4).generate(
        prompts, params
    )
    assert [c.token_ids for c in out] == [c.token_ids for c in ref]


def test_sharded_logits_match_unsharded():
    config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=6)
    model = random_model(config, seed=1)
    tokens = np.random.RandomState(0).randint(0, 97, (4, 11)).astype(np.int32)
    positions = np.broadcast_to(np.arange(11, dtype=np.int32), (4, 11))
    ref = np.asarray(model(tokens, positions))
    runner = ModelRunner(model, shd.make_mesh("data:2,model:4"))
    fn = jax.jit(lambda s, t, p: runner._model(s)(t, p))
    out = np.asarray(fn(runner.leaves, runner.put_batch({"t": tokens})["t"], positions))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _decode_hlo(runner: ModelRunner, batch_size: int) -> str:
    kv = runner.new_kv(num_pages=1 + batch_size * 2, page_size=4)
    b = batch_size
    batch = runner.put_batch(
        DecodeBatch(
            tokens=np.zeros(b, np.int32),
            positions=np.zeros(b, np.int32),
            block_tables=np.zeros((b, 2), np.int32),
            active=np.ones(b, bool),
            remaining=np.full(b, 4, np.int32),
            stop_ids=np.full((b, 1), -1, np.int32),
            **sampling_arrays([], [], b),
        )
    )
    return runner._decode.lower(runner.leaves, kv, batch, 2).compile().as_text()


def test_compiled_collectives():
    config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=6, vocab_size=128)
    model = random_model(config)
    # tensor parallel: row-parallel matmuls (attention out, MLP down) need an all-reduce
    float_all_reduce = re.compile(r"= f32\[[\d,]*\]\S* all-reduce\(")
    tp = _decode_hlo(ModelRunner(model, shd.make_mesh("model:4")), 4)
    assert float_all_reduce.search(tp)
    # pure data parallel: parameters are replicated, rows independent: no activation
    # all-reduce (only the scalar "is any row sampling?" flag is reduced)
    dp = _decode_hlo(ModelRunner(model, shd.make_mesh("data:4")), 4)
    assert not float_all_reduce.search(dp)
    assert "all-reduce" in dp  # the regex does see all-reduces in this text form


def test_engine_on_a_mesh_serves_what_one_device_serves():
    """The engine's device-resident slots and swaps on a data x model mesh (rows over data,
    KV heads over model) give the tokens of one device, with preemption."""
    from jaxserve.engine import Engine
    from jaxserve.sched import SchedulerConfig

    model = random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=4)
    rs = np.random.RandomState(2)
    prompts = [[int(t) for t in rs.randint(3, 128, rs.randint(3, 12))] for _ in range(5)]
    cfg = SchedulerConfig(max_batch=4, num_pages=16, page_size=4, max_seq_len=128, q0=1e-4)
    outs = []
    for mesh in (None, shd.make_mesh("data:2,model:2")):
        engine = Engine(model, "skip_join_mlfq", cfg, mesh=mesh)
        for i, p in enumerate(prompts):
            engine.submit(p, SamplingParams(max_new_tokens=14, seed=1), request_id=f"r{i}")
        engine.run_until_done(max_iterations=2000)
        assert sum(t.preemptions for t in engine.timelines.values()) > 0
        outs.append([engine.output(f"r{i}") for i in range(5)])
    assert outs[0] == outs[1]
