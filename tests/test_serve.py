"""experiments.serve end to end on the tiny preset, and the profiler's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_model, tiny_config

from jaxserve.profiler import Profile, profile
from jaxserve.runner import ModelRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve(*args: str, devices: int | None = None) -> subprocess.CompletedProcess:
    """experiments.serve in a subprocess; `devices`: that many simulated CPU devices."""
    env = None
    if devices is not None:
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-m", "experiments.serve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_serve_cli_same_trace_every_scheduler(tmp_path):
    r = _serve(
        "--model=tiny",
        "--schedulers=fcfs,vllm,skip_join_mlfq",
        "--num_requests=6",
        "--rate=50",
        "--max_batch=4",
        "--kv_pages=40",
        "--max_prompt_len=32",
        "--max_output_len=24",
        f"--out={tmp_path}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skip_join_mlfq" in r.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["flags"]["kv_pages"] == 40 and data["environment"]["backend"] == "cpu"
    runs = {run["scheduler"]: run for run in data["runs"]}
    assert set(runs) == {"fcfs", "vllm", "skip_join_mlfq"}
    outputs = {}
    for name, run in runs.items():
        s = run["summary"]
        assert s["num_finished"] == 6 and s["mean_jct"] > 0 and s["p99_ttft"] is not None
        assert s["compiles_during_run"] == 0
        outputs[name] = {q["id"]: q["output_ids"] for q in run["requests"]}
        for q in run["requests"]:
            assert q["first_token_time"] >= q["arrival"] and len(q["output_ids"]) >= 1
    # greedy decoding: what a request generates does not depend on how it was scheduled
    assert outputs["fcfs"] == outputs["vllm"] == outputs["skip_join_mlfq"]
    assert (tmp_path / "latency_cdf.png").stat().st_size > 0
    assert Profile.load(str(tmp_path / "profile.json")).prefill


@pytest.mark.slow  # two runs of the command: ~25 s on 2 cores, more on a loaded machine
def test_serve_with_rows_over_the_data_axis_gives_the_same_greedy_tokens(tmp_path):
    """--mesh=data:2 (2 devices, one process): every batch, the profiler's batches of one
    row too, runs split over "data"; each request generates what it does on data:1."""
    args = ["--model=tiny", "--schedulers=vllm", "--num_requests=5", "--rate=40"]
    args += ["--max_batch=4", "--kv_pages=12", "--max_prompt_len=16", "--max_output_len=8"]
    outputs = {}
    for mesh in ("data:1", "data:2"):
        r = _serve(*args, f"--mesh={mesh}", f"--out={tmp_path / mesh}", devices=2)
        assert r.returncode == 0, r.stderr[-3000:]
        (run,) = json.loads((tmp_path / mesh / "results.json").read_text())["runs"]
        assert run["summary"]["num_finished"] == 5
        assert run["summary"]["compiles_during_run"] == 0
        outputs[mesh] = {q["id"]: q["output_ids"] for q in run["requests"]}
    assert outputs["data:2"] == outputs["data:1"]


def test_profile_on_a_mesh_that_splits_rows_over_data():
    """A data:2 mesh runs no batch of one row: the profiler pads its batches to 2 rows and
    reports them by the rows asked for."""
    from jaxserve.sharding import make_mesh

    runner = ModelRunner(random_model(tiny_config()), make_mesh("data:2"))
    prof = profile(runner, page_size=4, lengths=[16], batches=[1, 2], reps=1)
    assert [b for b, _ in prof.decode] == [1, 2] and [n for n, _ in prof.prefill] == [16]
    assert all(t > 0 for _, t in prof.prefill + prof.decode)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--schedulers=fcfs,lottery"], "--schedulers"),
        (["--model=huge"], "--model"),
        (["--workload=/no/such.jsonl"], "--workload"),
        (["--rates=1,x"], "--rates"),
        (["--preemption=pray"], "--preemption"),
        (["--kv_pages=1"], "--kv_pages"),
        (["--output_sigma=0"], "--output_sigma"),
        (["--workload=alpaca_synth", "--output_sigma=1.5"], "sharegpt_synth only"),
        (["--quantum_charge=tokens"], "quantum_charge"),
    ],
)
def test_serve_cli_usage_errors(args, flag, tmp_path):
    r = _serve(*args, f"--out={tmp_path}")
    assert r.returncode != 0
    assert flag in r.stderr


def test_profile_table_and_round_trip(tmp_path):
    runner = ModelRunner(random_model(tiny_config()))
    prof = profile(runner, page_size=4, lengths=[16, 64], batches=[1, 4], reps=2)
    assert [n for n, _ in prof.prefill] == [16, 64] and [b for b, _ in prof.decode] == [1, 4]
    assert all(t > 0 for _, t in prof.prefill + prof.decode)
    assert prof.swap_bandwidth > 0 and prof.prefill_tokens_per_s > 0
    # interpolation between and beyond the measured points
    (n0, t0), (n1, t1) = prof.prefill
    assert prof.prefill_time(40) == pytest.approx(t0 + (t1 - t0) * (40 - 16) / 48)
    path = str(tmp_path / "p.json")
    prof.save(path)
    assert Profile.load(path) == prof
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a profile"):
        Profile.load(str(tmp_path / "bad.json"))


def test_serve_with_kv_prediction_prefill_compares_ttft(tmp_path):
    """A KVP checkpoint whose predictor changes the cache (A = B, a random predictor): every
    scheduler runs twice on the trace; the KV-prediction runs generate what `KVPModel`
    generates on its own (greedy, in the same paged cache), which is not what the base does."""
    from conftest import randomize
    from flax import nnx

    from jaxserve.experiment import resolve_model
    from jaxserve.generate import Generator
    from jaxserve.sampling import SamplingParams
    from kvpred.io import save_kvp
    from kvpred.model import KVPModel
    from kvpred.predictor import KVPredictor

    base = resolve_model(None, "tiny", 0)[0]  # what --model=tiny --seed=0 serves
    layers = list(range(base.config.num_layers))
    pred = randomize(KVPredictor(base.config, base.config, layers, rngs=nnx.Rngs(0)), seed=3)
    kvp = KVPModel(base, nnx.clone(base), pred)
    ckpt = save_kvp(kvp, str(tmp_path / "kvp"), base_source="tiny", meta={"aux_spec": "identity"})
    rng = np.random.default_rng(0)
    prompts = {f"q{i}": [int(t) for t in rng.integers(3, 1000, 6 + 5 * i)] for i in range(4)}
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"id": k, "arrival": 0.01 * i, "prompt_ids": p, "output_len": 8}) + "\n"
            for i, (k, p) in enumerate(prompts.items())
        )
    )
    out = tmp_path / "serve"
    r = _serve(
        "--model=tiny",
        "--schedulers=skip_join_mlfq",
        f"--workload={trace}",
        "--max_batch=4",
        "--kv_pages=40",
        "--max_prompt_len=32",
        "--max_output_len=16",
        f"--prefill=kv_prediction:{ckpt}",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TTFT with KV prediction" in r.stdout
    data = json.loads((out / "results.json").read_text())
    runs = {(run["scheduler"], run["prefill"]): run for run in data["runs"]}
    assert set(runs) == {("skip_join_mlfq", "base"), ("skip_join_mlfq", "kv_prediction")}
    served = {
        p: {q["id"]: q["output_ids"] for q in runs[("skip_join_mlfq", p)]["requests"]}
        for p in ("base", "kv_prediction")
    }
    params = SamplingParams(max_new_tokens=8)
    for name, model in (("base", base), ("kv_prediction", kvp)):
        own = Generator(model).generate(list(prompts.values()), params)
        assert served[name] == {k: c.token_ids for k, c in zip(prompts, own)}, name
    assert served["base"] != served["kv_prediction"]
    assert runs[("skip_join_mlfq", "kv_prediction")]["summary"]["compiles_during_run"] == 0
    ttft = data["kv_prediction"]["ttft"]
    assert [row["scheduler"] for row in ttft] == ["skip_join_mlfq"]
    assert all(row["mean_ttft_kvp"] > 0 and row["mean_ttft_speedup"] > 0 for row in ttft)
    bad = _serve("--model=tiny", "--prefill=kv_prediction:/no/such", f"--out={out}")
    assert bad.returncode != 0 and "--prefill" in bad.stderr
