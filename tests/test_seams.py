"""The extension points and shared helpers: workload sources, tasks, the benchmark harness,
the report renderer, and the small utilities (no model needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxserve import bench, metrics, workload
from jaxserve.sampling import SamplingParams, sampling_arrays
from jaxserve.utils import atomic_open, pow2, pow2_range, write_json
from kvpred import tasks
from kvpred.tasks import triviaqa as tqa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_new_workload_is_one_registered_source():
    class Fixed:
        name = "fixed_test"

        def matches(self, spec):
            return spec == self.name

        def build(self, spec, w):
            n = w.require_count(spec)
            return [
                workload.TraceRequest(f"f{i}", float(i), 3, 2, client=w.client) for i in range(n)
            ]

    workload.register_source(Fixed())
    try:
        assert "fixed_test" in workload.named_workloads()
        reqs = workload.make_workload("fixed_test", None, 3, client="a")
        assert [(r.id, r.arrival, r.client) for r in reqs] == [
            ("f0", 0.0, "a"),
            ("f1", 1.0, "a"),
            ("f2", 2.0, "a"),
        ]
    finally:
        del workload.SOURCES["fixed_test"]
    with pytest.raises(workload.WorkloadError, match="fixed_test"):
        workload.make_workload("fixed_test", 1.0, 3)


def test_conversations_source_matches_conversation_workload():
    lengths = workload.ShareGPTSynth(scale=0.5, max_output_len=64)
    want = workload.conversation_workload(5, (1, 4), 2.0, 1.0, lengths=lengths, seed=3)
    got = workload.make_workload("conversations", 2.0, 5, 3, scale=0.5, max_output_len=64)
    assert got == want and len({r.conversation for r in got}) == 5
    with pytest.raises(workload.WorkloadError, match="length_params"):
        workload.make_workload("conversations", 2.0, 5, length_params={"sigma": 1})


def test_task_registry_builds_tasks_and_names_them():
    assert {"synthetic_qa", "triviaqa:PATH", "humaneval"} <= set(tasks.task_specs())
    for bad, match in [
        ("mmlu", "unknown"),
        ("triviaqa", "needs an argument"),
        ("synthetic_qa:x", "takes no argument"),
    ]:
        with pytest.raises(ValueError, match=match):
            tasks.make_task(bad)
    task = tasks.make_task("synthetic_qa", tasks.TaskOptions(kb_entities=8))
    examples = task.load(limit=4)
    assert len(examples) == 4 and task.metric == "exact_match"
    shot = (examples[0].question, examples[0].answers[0])
    assert task.prompts(examples) == [tqa.one_shot_prompt(ex.question, shot) for ex in examples]
    texts = [[f" {ex.answers[0]}.\nQuestion"] for ex in examples[:3]] + [[" no idea"]]
    score, records = task.score(examples, texts)
    assert score == 0.75 and [r["correct"] for r in records] == [True, True, True, False]


def test_rounds_prefer_quiet_rounds():
    rounds = bench.Rounds(reps=3, quiet_cores=0.5)
    for load in (0.1, 1.0, 0.2, 0.3):
        rounds.rounds.append({"x": load, "other_cores": load})
    used, which = rounds.selected()
    assert which == "quiet" and [r["x"] for r in used] == [0.1, 0.2, 0.3]
    assert not rounds.more()  # three quiet rounds: enough
    s = bench.spread([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert bench.fmt_spread(s, unit="x") == "2.00x (1.00-3.00 over 3)"


def test_helpers(tmp_path):
    assert [pow2(n) for n in (0, 1, 2, 3, 5, 16, 17)] == [1, 1, 2, 4, 8, 16, 32]
    assert pow2(3, 16) == 16 and pow2_range(5) == [1, 2, 4, 8]
    path = tmp_path / "sub" / "x.json"
    write_json(path, {"a": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"a": "1.5"} and os.listdir(path.parent) == ["x.json"]
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError
    assert json.loads(path.read_text()) == {"a": "1.5"} and os.listdir(path.parent) == ["x.json"]
    a = sampling_arrays([SamplingParams(temperature=0.5, top_k=3)], [[7, 9]], batch=2)
    assert a["keys"].tolist() == [[7, 9], [0, 0]] and a["top_k"].tolist() == [3, 0]
    assert a["temperature"].tolist() == [0.5, 0.0] and a["top_p"].tolist() == [1.0, 1.0]


def _summary(mean, p99):
    return {
        "mean_jct": mean,
        "p99_jct": p99,
        "mean_ttft": 0.1,
        "p99_tbt": 0.01,
        "throughput_tokens_per_s": 100.0,
        "total_preemptions": 0,
    }


def test_report_renders_a_serve_results_file(tmp_path):
    means = {"fcfs": 8.0, "vllm": 4.0, "mlfq": 2.1, "skip_join_mlfq": 2.0, "srpt": 1.6}
    runs = [
        {"scheduler": k, "prefill": "base", "rate": 60.0, "summary": _summary(v, 2 * v)}
        for k, v in means.items()
    ]
    assert metrics.ratio_line({r["scheduler"]: r["summary"] for r in runs}).startswith(
        "mean JCT: fcfs/skip_join_mlfq 4.00x, vllm/skip_join_mlfq 2.00x, skip_join_mlfq/srpt 1.25x"
    )
    doc = {
        "flags": {"rate": 60.0},
        "profile": {},
        "runs": runs,
        "environment": {"argv": [os.path.join(ROOT, "experiments", "serve.py"), "--rate=60"]},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run(
        [sys.executable, "scripts/report.py", str(path), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "python -m experiments.serve --rate=60" in r.stdout
    assert "| skip_join_mlfq | 60 | 2.00 | 4.00 |" in r.stdout
    assert "fcfs/skip_join_mlfq **4.00x**" in r.stdout and "range over 2 runs" in r.stdout
