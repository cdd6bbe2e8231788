"""The engine core under random interleavings, and its packed slot updates.

Every request's tokens depend only on its prompt, seed, id and position, so whatever the
policy, page pool, arrival and cancel times, stops, overlap and decode steps, each request's
output must equal a prefix of the one it gets alone in a large pool (exactly that output cut
at its stop, unless cancelled), and every page, slot and host copy must come back.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_model, tiny_config
from engine_helpers import _config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve.batch import SlotUpdates, apply_slot_updates, init_slot_state
from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams

MAX_NEW, NUM_PROMPTS = 20, 6  # page size: engine_helpers.PAGE


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=64, max_seq_len=128), seed=21)


@pytest.fixture(scope="module")
def runner(model):
    return ModelRunner(model)


def _prompts() -> list[list[int]]:
    rs = np.random.RandomState(7)
    return [[int(t) for t in rs.randint(3, 64, rs.randint(2, 14))] for _ in range(NUM_PROMPTS)]


def _params(temperature: float, stop: int | None, max_new: int = MAX_NEW) -> SamplingParams:
    stops = () if stop is None else (stop,)
    return SamplingParams(max_new, temperature=temperature, stop_token_ids=stops, seed=3)


@pytest.fixture(scope="module")
def references(model, runner):
    """Each prompt's output alone, greedy and sampled, in a pool that never preempts."""
    out = {}
    for temperature in (0.0, 0.9):
        engine = Engine(model, "fcfs", _config(200), runner=runner, overlap=False)
        for k, p in enumerate(_prompts()):
            engine.submit(p, _params(temperature, None), request_id=f"p{k}")
        engine.run_until_done(max_iterations=500)
        out[temperature] = {f"p{k}": engine.output(f"p{k}") for k in range(NUM_PROMPTS)}
    return out


@st.composite
def scenarios(draw):
    n = draw(st.integers(2, NUM_PROMPTS))
    return {
        "policy": draw(st.sampled_from(["fcfs", "vllm", "mlfq", "skip_join_mlfq", "srpt"])),
        "pages": draw(st.sampled_from([14, 24])),
        "preemption": draw(st.sampled_from(["swap", "swap", "recompute", "auto"])),
        "overlap": draw(st.booleans()),
        "decode_steps": draw(st.sampled_from([1, 2, 4])),
        "temperature": draw(st.sampled_from([0.0, 0.9])),
        "requests": [
            {
                "prompt": k,
                "arrive": draw(st.integers(0, 12)),  # iteration at which it is submitted
                "max_new": draw(st.integers(1, MAX_NEW)),
                "stop_at": draw(st.one_of(st.none(), st.integers(0, MAX_NEW - 1))),
                "cancel": draw(st.one_of(st.none(), st.integers(0, 25))),
            }
            for k in draw(st.permutations(range(NUM_PROMPTS)))[:n]
        ],
    }


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_random_interleavings_keep_outputs_and_pages(model, runner, references, scenario):
    ref = references[scenario["temperature"]]
    prompts = _prompts()
    engine = Engine(
        model,
        scenario["policy"],
        _config(scenario["pages"], scenario["preemption"]),
        runner=runner,
        overlap=scenario["overlap"],
        decode_steps=scenario["decode_steps"],
    )
    want, cancelled = {}, {}  # cancelled: id -> tokens it had when cancelled
    reqs = scenario["requests"]
    for it in range(2000):
        for q in reqs:
            rid = f"p{q['prompt']}"
            if q["arrive"] == it:
                full = ref[rid][: q["max_new"]]
                stop = None if q["stop_at"] is None else full[min(q["stop_at"], len(full) - 1)]
                want[rid] = full if stop is None else full[: full.index(stop) + 1]
                params = _params(scenario["temperature"], stop, q["max_new"])
                engine.submit(prompts[q["prompt"]], params, request_id=rid)
            if q["cancel"] == it and rid in want:
                engine.cancel(rid)
                cancelled[rid] = len(engine.output(rid))
        if it > max(q["arrive"] for q in reqs) and not engine.has_work:
            break
        if engine.has_work:
            engine.step()
    assert not engine.has_work
    for rid, tokens in want.items():
        got = engine.output(rid)
        if rid in cancelled:  # nothing more once cancelled, though tokens were in flight
            assert got == tokens[: cancelled[rid]], rid
        elif engine.timelines[rid].rejected:
            assert got == []
        else:
            assert got == tokens, (rid, engine.timelines[rid].finish_reason)
    engine.scheduler.check_invariants()
    assert engine.scheduler.allocator.num_free == scenario["pages"] - 1
    assert engine.scheduler.host_used == 0 and not engine.switch.swapped
    assert not engine.switch.on_host and engine.host.live_bytes == 0  # no host copy leaked
    assert not engine.device.resident and engine.device.num_free_slots == scenario["pages"] - 1


def test_slot_updates_are_applied_as_packed():
    """Inserts (token from the host or from a prefill row), a page growth after an insert in
    the same step, and the rows to decode: the device state equals what the records say."""
    ups = SlotUpdates(num_slots=5, max_rows=4, max_pages=3, num_stop=2)
    state = jax.device_put(init_slot_state(5, 4, 3, 2))
    p = SamplingParams(8, temperature=0.5, top_k=7, top_p=0.75)
    key = np.array([123, 4000000000], np.uint32)
    ups.insert(2, [4, 5], position=9, remaining=6, key=key, params=p, stop_ids=[11], token=42)
    ups.insert(0, [7], position=3, remaining=2, key=key, params=p, stop_ids=[], prefill_row=1)
    ups.grow(0, [7, 8])
    packed = ups.pack([0, 2])
    assert packed.shape == (2 + 1, ups.width) and len(ups) == 0
    state = apply_slot_updates(state, packed, jax.numpy.asarray([50, 51, 52]))
    s = jax.tree.map(np.asarray, state.slots)
    np.testing.assert_array_equal(state.rows, [0, 2, 5, 5])  # unused rows: the spare slot
    np.testing.assert_array_equal(s.tokens[[0, 2]], [51, 42])
    np.testing.assert_array_equal(s.positions[[0, 2]], [3, 9])
    np.testing.assert_array_equal(s.block_tables[0], [7, 8, 0])
    np.testing.assert_array_equal(s.block_tables[2], [4, 5, 0])
    np.testing.assert_array_equal(s.stop_ids[[0, 2]], [[-1, -1], [11, -1]])
    np.testing.assert_array_equal(s.active, [True, False, True, False, False, False])
    np.testing.assert_array_equal(s.remaining[[0, 2]], [2, 6])
    np.testing.assert_array_equal(s.keys[2], key)
    assert s.temperature[2] == np.float32(0.5) and s.top_p[2] == np.float32(0.75)
    assert s.top_k[2] == 7
    # the next step: only a page for slot 2; its token and position stay as the device left them
    ups.grow(2, [4, 5, 6])
    state = apply_slot_updates(state, ups.pack([2]), jax.numpy.zeros(1, jax.numpy.int32))
    s2 = jax.tree.map(np.asarray, state.slots)
    np.testing.assert_array_equal(s2.block_tables[2], [4, 5, 6])
    assert s2.tokens[2] == 42 and s2.positions[2] == 9 and s2.remaining[2] == 6
    np.testing.assert_array_equal(state.rows, [2, 5, 5, 5])
    # the spare slot (5) is never active and keeps a null block table
    assert not s2.active[5] and not s2.block_tables[5].any()
    with pytest.raises(ValueError, match="exactly one of token and prefill_row"):
        ups.insert(1, [1], 0, 1, key, p, [], token=None, prefill_row=None)
