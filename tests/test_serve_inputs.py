"""experiments.serve with requests that can never run: they are known before the run, warm-up
skips them, and the rejections show in the table and in results.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxserve import serve, serve_trace
from jaxserve.profiler import Profile
from jaxserve.sched import Request, SchedulerConfig, State, make_scheduler
from jaxserve.workload import TraceRequest


@pytest.mark.parametrize("prompt_len", [1, 15, 16, 17, 60, 64, 65, 300])
@pytest.mark.parametrize("cap", [1, 16, 40])
@pytest.mark.parametrize("kv_pages", [2, 5, 9])
def test_never_runs_reason_is_the_schedulers_rejection(prompt_len, cap, kv_pages):
    config = SchedulerConfig(max_batch=4, num_pages=kv_pages, page_size=16, max_seq_len=64)
    sched = make_scheduler("fcfs", config)
    r = sched.add(Request(id="r", arrival=0.0, prompt_len=prompt_len, max_new_tokens=cap))
    why = serve_trace.never_runs_reason(prompt_len, cap, 64, kv_pages, 16)
    assert (r.state == State.REJECTED) == (why is not None)
    if why is not None:
        assert r.finish_reason == f"rejected: {why}"


def _prepared(lengths: dict[str, int], never: set[str]) -> serve_trace.PreparedTrace:
    reqs = [TraceRequest(k, 0.0, n, 4) for k, n in lengths.items()]
    return serve_trace.PreparedTrace(
        rate=1.0,
        requests=reqs,
        prompts={k: [3] * n for k, n in lengths.items()},
        caps={k: 4 for k in lengths},
        never_runs={k: "too long" for k in never},
    )


def test_warmup_covers_only_requests_that_can_run():
    t = _prepared({"a": 10, "long": 5000, "b": 30}, {"long"})
    assert serve_trace.warmup_lengths(t, 1024) == (30, 34)
    assert serve_trace.warmup_lengths(_prepared({"long": 5000}, {"long"}), 1024) is None


def _profile(path) -> str:
    prof = Profile(
        model="hand-written",
        device="cpu",
        prefill=[(16, 1e-3), (64, 4e-3)],
        decode=[(1, 1e-3), (2, 1.5e-3)],
        swap_bandwidth=1e9,
        prefill_tokens_per_s=1e4,
    )
    prof.save(str(path))
    return str(path)


def test_rejected_requests_compile_nothing_and_show_with_their_reason(tmp_path, capsys):
    rows = [
        {"id": "long", "arrival": 0.0, "prompt_len": 5000, "output_len": 4},
        {"id": "ok", "arrival": 0.01, "prompt_len": 12, "output_len": 4},
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = serve.ServeSettings(
        schedulers=["fcfs"],
        workload=str(trace),
        rates=[1.0],
        num_requests=None,
        max_batch=2,
        kv_pages=40,
        max_prompt_len=32,
        max_output_len=8,
    )
    profile = _profile(tmp_path / "profile.json")
    res = serve.run_serve(
        settings, checkpoint=None, preset="tiny", out_dir=str(tmp_path / "a"), profile_path=profile
    )
    (run,) = res["runs"]
    why = "prompt of 5000 tokens > max_seq_len 1024"  # the tiny preset's context
    assert run["summary"]["num_rejected"] == 1 and run["summary"]["num_finished"] == 1
    assert run["summary"]["rejected_reasons"] == {why: 1}
    recs = {q["id"]: q for q in run["requests"]}
    assert (
        recs["long"]["state"] == "rejected" and recs["long"]["finish_reason"] == f"rejected: {why}"
    )
    assert recs["ok"]["finish_reason"] == "stop" and len(recs["ok"]["output_ids"]) == 4
    assert run["summary"]["compiles_during_run"] == 0
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["runs"][0]["summary"]["rejected_reasons"] == {why: 1}
    out = capsys.readouterr().out
    header = next(x for x in out.splitlines() if x.strip().startswith("scheduler"))
    row = next(x for x in out.splitlines() if x.strip().startswith("fcfs"))
    assert header.split()[header.split().index("rejected") + 1] == "compiles"
    assert row.split()[-2] == "1"  # the rejected column
    assert f"rejected 1: {why}" in out and "1 of 2 requests can never run" in out

    # a trace whose every request can never run compiles nothing at all
    trace.write_text(json.dumps(rows[0]) + "\n")
    res = serve.run_serve(
        dataclasses.replace(settings),
        checkpoint=None,
        preset="tiny",
        out_dir=str(tmp_path / "b"),
        profile_path=profile,
    )
    s = res["runs"][0]["summary"]
    assert s["warmup_compiles"] == 0 and s["compiles_during_run"] == 0
    assert s["num_rejected"] == 1 and s["mean_jct"] is None
