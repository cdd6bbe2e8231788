"""experiments.simulate end to end (small), and its answers to bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxserve import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "cli_driver.py")
GPT3 = ["--hardware=a100-80g", "--num_devices=16", "--model=gpt3-175b", "--tp=8", "--pp=2"]


def test_simulate_writes_the_serve_schema_and_the_plot(tmp_path):
    """GPT-3 175B on 16 A100s, two schedulers, two rates, 30 requests: results.json holds one
    run per (scheduler, rate) with `metrics.summarize`'s keys (experiments.serve's schema),
    and the JCT-vs-rate plot is written."""
    out = tmp_path / "sim"
    r = subprocess.run(
        [sys.executable, "-m", "experiments.simulate", *GPT3,
         "--schedulers=fcfs,skip_join_mlfq", "--rates=0.5,2", "--num_requests=30",
         "--max_output_len=256", "--seed=1", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert [(x["scheduler"], x["rate"]) for x in res["runs"]] == [
        ("fcfs", 0.5), ("skip_join_mlfq", 0.5), ("fcfs", 2.0), ("skip_join_mlfq", 2.0)
    ]  # fmt: skip
    want = set(metrics.summarize([]))
    for run in res["runs"]:
        assert want <= set(run["summary"]) and run["summary"]["num_finished"] == 30
        assert len(run["requests"]) == 30 and run["prefill"] == "base"
    sim = res["simulator"]
    assert sim["parallelism"] == {"tp": 8, "pp": 2, "microbatches": None, "replicas": 1}
    assert sim["kv_pages"] > 1000 and (out / "jct_vs_rate.png").stat().st_size > 0
    assert (out / "tail_vs_rate.png").stat().st_size > 0
    assert "fcfs/skip_join_mlfq" in r.stdout
    # every flag that shapes the run is recorded, the policies' knobs among them
    assert res["flags"]["rerank_margin"] == 1.0 and res["flags"]["q0_iterations"] == 8.0
    assert res["flags"]["model"] == "gpt3-175b" and res["flags"]["seed"] == 1


def test_simulate_prices_fastswitchs_mechanisms_with_switch(tmp_path):
    """--switch=all on a multi-turn trace: later turns reuse their conversation's kept KV,
    and each run's summary carries the copies (bytes, seconds, reused prompt tokens)."""
    out = tmp_path / "sim"
    r = subprocess.run(
        [sys.executable, "-m", "experiments.simulate", "--model=llama-3-8b",
         "--workload=multiturn_synth", "--schedulers=vllm,fair_priority", "--rates=2",
         "--num_requests=40", "--switch=all", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["flags"]["switch"] == "all" and res["simulator"]["settings"]["switch"] == "all"
    for run in res["runs"]:
        s = run["summary"]
        assert s["num_finished"] == 40 and s["prompt_tokens_reused"] > 0
        assert s["bytes_copied"] > 0 and s["swap_seconds"] > 0


CASES = [
    (["--num_devices=12", "--tp=8", "--pp=2"], 2, "--num_devices=12 is not a multiple"),
    (["--hardware=b200"], 2, "--hardware: unknown 'b200'"),
    (["--model=gpt5"], 2, "--model: unknown 'gpt5'"),
    (["--rates=1,fast"], 2, "--rates"),
    (["--rates=0"], 2, "--rates must be positive"),
    (["--schedulers=fcfs,lifo"], 2, "--schedulers: unknown ['lifo']"),
    (["--workload=/nonexistent.jsonl"], 2, "--workload"),
    (["--tp=0"], 2, "--tp must be >= 1"),
    (["--flops_efficiency=1.5"], 2, "--flops_efficiency must be in (0, 1]"),
    (["--hardware=tpu-v5e", "--model=gpt3-175b"], 1, "does not fit"),
    (["--model=gpt3-175b", "--num_devices=5", "--pp=5"], 1, "not divisible into pp=5"),
    (["--dtype=float8"], 1, "float8"),
    (["--input_cost=0", "--output_cost=0"], 2, "cannot both be 0"),
    (["--output_cost=-1"], 2, "--output_cost must be a finite number >= 0"),
    (["--q0_iterations=0"], 2, "--q0_iterations must be a finite number > 0"),
    (["--arrival=gamma", "--cv=0"], 2, "--cv must be > 0"),
    (["--rerank_margin=inf"], 2, "--rerank_margin must be finite"),
    (["--page_size=0"], 2, "--page_size"),
    (["--switch=fast"], 2, "--switch"),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad")
    cases = [[*argv, f"--out={out}", "--num_requests=2"] for argv, _, _ in CASES]
    r = subprocess.run(
        [sys.executable, DRIVER, "experiments.simulate"],
        input=json.dumps(cases), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[" ".join(c[0]) for c in CASES])
def test_bad_flags_get_one_line_errors(answers, i):
    _, status, message = CASES[i]
    got = answers[i]
    assert got["status"] == status, got["stderr"]
    assert got["stderr"].startswith("error: ") and message in got["stderr"], got["stderr"]
    assert "Traceback" not in got["stderr"]
