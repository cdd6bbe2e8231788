"""Serving across 2 CPU processes (`jaxserve.multihost`): the same greedy outputs as one process.

The worker (this file run by `scripts/launch_local.sh 2`, one simulated device per process)
serves a fixed trace on `model:2`, a mesh whose two devices belong to different processes, so
the KV heads and the weights' head/MLP dimensions are split across processes. Process 0
writes every request's tokens and the coordination cost to a JSON file; the test compares the
tokens with one process serving the same trace on a `model:2` mesh of its own two devices.

`experiments.serve` itself runs the same way: 2 processes of the command against one process
of it with two devices, on the same trace and mesh shape.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from test_distributed import ROOT, launch, start, stop

PROMPTS = [[5, 17, 33, 9], [40, 41, 42, 43, 44, 45, 46], [7] * 11, [88, 3], [12, 60, 24]]
MAX_NEW = [12, 5, 9, 16, 7]


def serve(
    mesh, clock=None, trace_out: str | None = None, preemption: str = "recompute"
) -> tuple[dict, dict]:
    """Serve the trace: all requests at once, a batch of 4 and 7 pages of 4 tokens, so they
    queue and the `vllm` policy preempts; (tokens, stats)."""
    from conftest import random_model, tiny_config

    from jaxserve import distributed, multihost
    from jaxserve.engine import Engine
    from jaxserve.sampling import SamplingParams
    from jaxserve.sched import SchedulerConfig

    config = tiny_config()
    multihost.check_mesh(mesh)
    sched = SchedulerConfig(
        max_batch=4, num_pages=8, page_size=4, max_seq_len=64, preemption=preemption
    )
    clock = clock or multihost.ReplicatedClock()
    host_mode = "pinned_host" if preemption == "swap" else "auto"
    engine = Engine(
        random_model(config, 0), "vllm", sched, mesh=mesh, clock=clock, host_mode=host_mode
    )
    arrivals = []
    for i, (ids, n) in enumerate(zip(PROMPTS, MAX_NEW)):
        params = SamplingParams(max_new_tokens=n, temperature=0.0)

        def submit(at, ids=ids, params=params, i=i):
            return engine.submit(ids, params, request_id=f"r{i}", arrival=at)

        arrivals.append((0.0, submit))
    t0 = time.perf_counter()
    iterations = multihost.run_replicated(engine, arrivals)
    wall = time.perf_counter() - t0
    tokens = {f"r{i}": engine.output(f"r{i}") for i in range(len(PROMPTS))}
    info = {
        "iterations": iterations,
        "wall_s": wall,
        "ticks": clock.stats.ticks,
        "tick_seconds": clock.stats.seconds,
        "preemptions": sum(tl.preemptions for tl in engine.timelines.values()),
    }
    if trace_out and distributed.is_main():
        with open(trace_out, "w") as f:
            json.dump({"tokens": tokens, "info": info}, f)
    return tokens, info


@pytest.mark.slow
def test_two_processes_serve_the_same_greedy_tokens_as_one_with_swaps(tmp_path):
    from jaxserve import sharding

    out = str(tmp_path / "multi.json")
    rc, log, _ = launch(["--out", out], timeout=240, devices=1, script=__file__)
    assert rc == 0, log
    with open(out) as f:
        multi = json.load(f)
    one, info = serve(sharding.make_mesh("model:2"), preemption="swap")
    assert info["preemptions"] > 0  # the trace does swap
    assert multi["info"]["preemptions"] == info["preemptions"]
    assert multi["tokens"] == one
    assert [len(one[f"r{i}"]) for i in range(len(PROMPTS))] == MAX_NEW
    assert multi["info"]["ticks"] > multi["info"]["iterations"] > 1  # every one checked


# a tiny trace two schedulers serve; the pages are few, so `vllm` preempts (swaps)
SERVE_ARGS = [
    "--model=tiny",
    "--schedulers=vllm,skip_join_mlfq",
    "--num_requests=5",
    "--rate=40",
    "--max_batch=4",
    "--kv_pages=6",
    "--max_prompt_len=16",
    "--max_output_len=8",
    "--mesh=model:2",
]


def _outputs(out_dir) -> dict:
    with open(os.path.join(out_dir, "results.json")) as f:
        runs = json.load(f)["runs"]
    return {
        (r["scheduler"], r["prefill"]): (
            {q["id"]: q["output_ids"] for q in r["requests"]},
            r["summary"],
        )
        for r in runs
    }


def serve_one_and_two(tmp_path, extra: list[str] = ()) -> tuple[dict, dict, str]:
    """`experiments.serve` as 2 processes x 1 device and as 1 process x 2 devices: the
    outputs of both (`_outputs`) and the 2-process log."""
    two, one = tmp_path / "two", tmp_path / "one"
    rc, log, _ = launch(
        [*SERVE_ARGS, *extra, f"--out={two}"], timeout=300, devices=1, module="experiments.serve"
    )
    assert rc == 0, log[-5000:]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    r = subprocess.run(
        [sys.executable, "-m", "experiments.serve", *SERVE_ARGS, *extra, f"--out={one}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return _outputs(two), _outputs(one), log


@pytest.mark.slow
def test_serve_command_across_two_processes_gives_one_process_greedy_tokens(tmp_path):
    two, one, log = serve_one_and_two(tmp_path)
    assert set(two) == set(one) == {("vllm", "base"), ("skip_join_mlfq", "base")}
    for key in one:
        assert two[key][0] == one[key][0], key
        assert two[key][1]["num_finished"] == 5
        assert two[key][1]["processes"] == 2 and "processes" not in one[key][1]
        assert two[key][1]["coordination_ticks"] > two[key][1]["iterations"] > 1
    assert sum(two[k][1]["total_preemptions"] for k in two) > 0  # the trace does preempt
    # process 0 alone prints the table (and writes: the only results.json is checked above)
    assert len(re.findall(r"^\[p0\] +skip_join_mlfq ", log, re.M)) == 1
    assert not re.findall(r"^\[p1\] +skip_join_mlfq ", log, re.M)


@pytest.mark.slow
def test_serve_command_with_rows_over_data_across_two_processes_gives_one_process_tokens(
    tmp_path,
):
    """data:2 across 2 processes: each process holds half of every batch's rows, and reads
    every row's tokens (a prefill's come back replicated too)."""
    two, one, _ = serve_one_and_two(tmp_path, ["--mesh=data:2"])
    assert set(two) == set(one) == {("vllm", "base"), ("skip_join_mlfq", "base")}
    for key in one:
        assert two[key][0] == one[key][0], key
        assert two[key][1]["num_finished"] == 5 and two[key][1]["processes"] == 2
        assert two[key][1]["compiles_during_run"] == one[key][1]["compiles_during_run"] == 0
    assert sum(two[k][1]["total_preemptions"] for k in two) > 0  # the trace does preempt


def kvp_checkpoint(directory: str) -> str:
    """A KV-prediction checkpoint around `--model=tiny --seed=0` whose predictor changes the
    cache (the auxiliary model is the base, the predictor random), so KV prediction's greedy
    tokens differ from the base's."""
    from conftest import randomize
    from flax import nnx

    from jaxserve.experiment import resolve_model
    from kvpred.io import save_kvp
    from kvpred.model import KVPModel
    from kvpred.predictor import KVPredictor

    base = resolve_model(None, "tiny", 0)[0]
    layers = list(range(base.config.num_layers))
    pred = randomize(KVPredictor(base.config, base.config, layers, rngs=nnx.Rngs(0)), seed=3)
    kvp = KVPModel(base, nnx.clone(base), pred)
    return save_kvp(kvp, directory, base_source="tiny", meta={"aux_spec": "identity"})


@pytest.mark.slow
def test_kv_prediction_prefill_across_two_processes_gives_one_process_tokens(tmp_path):
    ckpt = kvp_checkpoint(str(tmp_path / "kvp"))
    extra = ["--schedulers=vllm", f"--prefill=kv_prediction:{ckpt}"]
    two, one, log = serve_one_and_two(tmp_path, extra)
    assert set(two) == set(one) == {("vllm", "base"), ("vllm", "kv_prediction")}
    for key in one:
        assert two[key][0] == one[key][0], key
        assert two[key][1]["num_finished"] == 5
    assert two[("vllm", "base")][0] != two[("vllm", "kv_prediction")][0]  # it predicts
    assert "TTFT with KV prediction" in log


@pytest.mark.slow
def test_http_server_across_two_processes_gives_one_process_tokens(tmp_path):
    """experiments.server as 2 processes (process 0 serves HTTP, both run the engine),
    experiments.load against it: the tokens of experiments.serve on one process."""
    engine = ["--model=tiny", "--max_batch=4", "--kv_pages=6", "--max_prompt_len=16"]
    engine += ["--max_output_len=8", "--mesh=model:2"]
    trace = ["--num_requests=5", "--rate=40", "--max_prompt_len=16", "--max_output_len=8"]
    srv = start([*engine, "--scheduler=vllm", "--port=0"], devices=1, module="experiments.server")
    lines = []
    try:
        url, deadline = None, time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            lines.append(srv.stdout.readline().decode(errors="replace"))
            assert lines[-1], "the server exited: " + "".join(lines[-40:])
            m = re.search(r"^\[p0\] serving .* on (http://127\.0\.0\.1:\d+)", lines[-1])
            url = m.group(1) if m else None
        env = dict(os.environ, PYTHONPATH=ROOT)
        load = [sys.executable, "-m", "experiments.load", f"--url={url}", *trace]
        r = subprocess.run(
            [*load, f"--out={tmp_path / 'http'}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert not any(line.startswith("[p1] serving") for line in lines)
    finally:
        stop(srv)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    local = [sys.executable, "-m", "experiments.serve", *engine, *trace, "--schedulers=vllm"]
    r = subprocess.run(
        [*local, f"--out={tmp_path / 'local'}"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    http, local = _outputs(tmp_path / "http"), _outputs(tmp_path / "local")
    assert http[("vllm", "base")][0] == local[("vllm", "base")][0]


def test_http_commands_reach_the_other_processes_as_process_0_applies_them():
    """What process 0's engine loop posts in a tick (`replicas.encode`) is what the others'
    engines get (`replicas.follow`): the same submissions in the same order with the same
    fields, cancels of live requests only, and the requests each step ends released."""
    import asyncio

    from jaxserve.events import Event
    from jaxserve.sampling import SamplingParams
    from jaxserve.server import replicas
    from jaxserve.server.engine_loop import Handle, _Cancel, _Submit
    from jaxserve.server.protocol import GenRequest

    params = SamplingParams(max_new_tokens=5, temperature=0.7, top_k=3, stop_token_ids=(2, 9))
    gen = GenRequest([4, 5, 6], params, user="ann", priority=-2, conversation="c1")
    other = GenRequest([7], SamplingParams(max_new_tokens=2), trace_output_len=1)
    h1, h2 = Handle("cmpl-0", gen, asyncio.Queue()), Handle("cmpl-1", other, asyncio.Queue())
    ticks = [
        replicas.encode([_Submit(h1), _Submit(h2), _Cancel("cmpl-9")]),
        "",  # an iteration without news
        replicas.encode([_Cancel("cmpl-1"), _Cancel("cmpl-0")]),
        replicas.STOP,
    ]

    class Engine:  # records what the follower does to its engine
        def __init__(self):
            self.calls, self.timelines, self.work = [], {}, 0
            self.clock = type("Clock", (), {"tick": lambda _, fp: ticks.pop(0)})()

        has_work = property(lambda self: self.work > 0)

        def submit(self, ids, p, **kw):
            self.calls.append(("submit", ids, p, kw))
            self.timelines[kw["request_id"]] = object()
            self.work += 1

        def step(self):
            self.work = 0
            self.calls.append(("step",))
            return [Event("finish", "cmpl-0", 0.0, detail="length")]

        def cancel(self, rid):
            self.calls.append(("cancel", rid))

        def release(self, rid):
            self.calls.append(("release", rid))
            del self.timelines[rid]

        def now(self):
            return 0.0

    engine = Engine()
    assert replicas.follow(engine, max_chunk_s=None) == 1
    kw0 = dict(client="ann", priority=-2, output_len=None, stop_at_output_len=False)
    kw1 = dict(client="default", priority=0, output_len=1, stop_at_output_len=True)
    assert engine.calls == [
        ("submit", [4, 5, 6], params, dict(request_id="cmpl-0", **kw0, conversation="c1")),
        (
            "submit",
            [7],
            SamplingParams(max_new_tokens=2),
            dict(request_id="cmpl-1", **kw1, conversation=None),
        ),
        ("step",),
        ("release", "cmpl-0"),  # ended by the step
        ("cancel", "cmpl-1"),  # cmpl-9 and the ended cmpl-0 are not live: not cancelled
        ("release", "cmpl-1"),
    ]


def test_serving_mesh_splits_rows_over_data_in_powers_of_two():
    from jaxserve import serve
    from jaxserve.errors import InputError

    def settings(mesh):
        return serve.ServeSettings(["fcfs"], "sharegpt_synth", [1.0], 4, mesh=mesh)

    assert serve.serving_mesh(settings(None)) is None  # one process: one device
    assert dict(serve.serving_mesh(settings("model:2")).shape) == {"data": 1, "model": 2}
    shape = dict(serve.serving_mesh(settings("data:2,model:2")).shape)
    assert shape == {"data": 2, "model": 2}
    with pytest.raises(InputError, match="--mesh=data:3: .* batches of 2\\^k rows"):
        serve.serving_mesh(settings("data:3"))
    with pytest.raises(InputError, match="--mesh=model:64: .* needs 64 devices"):
        serve.serving_mesh(settings("model:64"))


def test_prefill_tokens_come_back_whole_on_every_device():
    """Rows split over "data" may live in other processes: a prefill's (and a continuation's)
    next tokens come back replicated, so every process reads them all."""
    import numpy as np
    from conftest import random_model, tiny_config

    from jaxserve import sharding
    from jaxserve.batch import ExtendBatch, PrefillBatch
    from jaxserve.runner import ModelRunner
    from jaxserve.sampling import sampling_arrays

    runner = ModelRunner(random_model(tiny_config()), sharding.make_mesh("data:2,model:2"))
    kv = runner.new_kv(8, 4)
    zeros, samp = np.zeros(2, np.int32), sampling_arrays([], [], 2)
    tokens, bt = np.ones((2, 8), np.int32), np.array([[1, 2], [3, 4]], np.int32)
    kv, first = runner.prefill(kv, PrefillBatch(tokens, np.array([8, 5], np.int32), bt, **samp))
    kv, more = runner.extend(kv, ExtendBatch(tokens, zeros + 8, zeros + 1, bt, **samp))
    for x in (first, more):
        assert x.shape == (2,) and x.sharding.is_fully_replicated


def test_profile_is_process_0s_in_every_process(monkeypatch):
    """What the scheduler reads that each process measures is process 0's (a profile)."""
    import itertools

    from jaxserve import distributed, multihost

    store = {}
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(multihost, "_send", store.__setitem__)
    monkeypatch.setattr(multihost, "_receive", store.pop)
    for process, measured in ((0, 0.5), (1, 0.9)):  # the same first share in each process
        monkeypatch.setattr(distributed, "process_index", lambda p=process: p)
        monkeypatch.setattr(multihost, "_shared", itertools.count())
        assert multihost.share_json({"decode": [(1, measured)]}) == {"decode": [[1, 0.5]]}
    assert not store


def test_a_replica_that_diverges_is_named(monkeypatch):
    """The per-iteration check, without processes: process 0's fingerprint differs."""
    from jaxserve import distributed, multihost
    from jaxserve.events import Event

    events = [Event("token", "r0", 0.0, token=5)]
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    clock = multihost.ReplicatedClock()
    mine = multihost.events_fingerprint(events)
    key = f"jaxserve/tick/{clock._id}/{{}}"  # (each clock has its own keys)
    posted = {key.format(0): f"3.25 {mine}", key.format(1): f"3.5 {mine + 1}"}
    monkeypatch.setattr(multihost, "_receive", posted.pop)  # what process 0 posted
    clock.tick(mine)  # iteration 0: process 0 emitted the same events
    assert clock() == 3.25 and clock.iteration == 1
    with pytest.raises(multihost.ReplicaDivergedError, match="process 1 of 2: iteration 1"):
        clock.tick(mine)  # iteration 1: process 0 emitted something else
    assert mine == multihost.events_fingerprint(list(events))
    assert mine != multihost.events_fingerprint([Event("token", "r0", 0.0, token=6)])


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from absl import flags

    from jaxserve import cli, sharding

    flags.DEFINE_string("out", None, "Process 0 writes tokens and costs here.")
    flags.DEFINE_enum("preemption", "swap", ["swap", "recompute"], "How victims lose KV.")

    def main(argv):
        f = flags.FLAGS
        serve(sharding.make_mesh("model:2"), trace_out=f.out, preemption=f.preemption)

    cli.run(main)
