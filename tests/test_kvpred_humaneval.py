"""HumanEval: loading, completion cuts, sandboxed execution and its limits, pass@k."""

from __future__ import annotations

import gzip
import json
import math
import sys
import time

import pytest

from kvpred.tasks import (
    HUMANEVAL_STOP_STRINGS,
    check_completion,
    cut_completion,
    evaluate,
    load_humaneval,
)

# ----------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_shipped_problems_load(problems, tmp_path):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= set(problems[0])
    assert load_humaneval(limit=5) == problems[:5]

    plain = tmp_path / "few.jsonl"
    plain.write_text("".join(json.dumps(p) + "\n" for p in problems[:2]), encoding="utf-8")
    zipped = tmp_path / "few.jsonl.gz"
    with gzip.open(zipped, "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))
    assert load_humaneval(plain) == problems[:2]
    assert load_humaneval(zipped, limit=1) == problems[:1]

    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_humaneval(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "prompt": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1 .*'entry_point', 'test'"):
        load_humaneval(bad)


def test_cut_completion_stops_at_the_next_top_level_block():
    assert HUMANEVAL_STOP_STRINGS == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    body = "    return sorted(x)\n"
    assert cut_completion(body) == body
    assert cut_completion(body + "\n\ndef other():\n    pass\n") == body + "\n"
    assert cut_completion(body + '\nif __name__ == "__main__":\n') == body
    assert cut_completion(body + "\nprint(f(1))\n#x") == body
    assert cut_completion(body + "\n# tests\nclass A: pass") == body
    # indented blocks are part of the body
    assert cut_completion("    if x:\n        return 1\n    # note\n") == (
        "    if x:\n        return 1\n    # note\n"
    )


def test_canonical_solutions_pass(problems):
    first = problems[:5]
    res = evaluate(first, {p["task_id"]: [p["canonical_solution"]] for p in first}, workers=2)
    assert res["pass_at_k"] == {"pass@1": 1.0}
    assert res["num_tasks"] == 5 and res["num_samples"] == 5
    assert all(t["results"][0]["result"] == "passed" for t in res["per_task"].values())


def test_wrong_and_early_exiting_completions_fail(problems):
    p = problems[0]
    r = check_completion(p, "    return False\n")
    assert r == {"task_id": "HumanEval/0", "passed": False, "result": "failed: AssertionError"}
    r = check_completion(p, "    return undefined_name\n")
    assert r["result"] == "failed: NameError: name 'undefined_name' is not defined"
    r = check_completion(p, "  return True\n    pass\n")
    assert not r["passed"] and r["result"].startswith("failed: IndentationError")
    # leaving before the tests run is not a pass
    r = check_completion(p, p["canonical_solution"] + "\nimport sys\nsys.exit(0)\n")
    assert r["result"].startswith("failed: SystemExit: 0"), r
    r = check_completion(p, p["canonical_solution"] + "\nimport os\nos._exit(0)\n")
    assert r["result"] == "failed: the program exited before its tests finished", r


def test_infinite_loop_times_out_within_the_limit(problems):
    start = time.monotonic()
    r = check_completion(problems[0], "    while True:\n        pass\n", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert r == {"task_id": "HumanEval/0", "passed": False, "result": "timed out"}
    assert elapsed < 3.0, elapsed


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="RLIMIT_AS is enforced only on Linux (macOS ignores it, Windows has no setrlimit)",
)
def test_memory_hog_fails_under_the_memory_limit(problems):
    p = problems[0]
    # 1 GiB from calloc (no page is touched, so it is quick when allowed), then a correct body
    hog = "    _hog = bytes(1024**3)\n" + p["canonical_solution"]
    r = check_completion(p, hog, memory_mb=256)
    assert r == {"task_id": "HumanEval/0", "passed": False, "result": "failed: MemoryError"}
    # the same program passes without the limit: the limit is what stops it
    assert check_completion(p, hog, memory_mb=None)["passed"]


def test_pass_at_k_matches_hand_worked_values(problems):
    p = problems[0]
    wrong = "    return False\n"
    samples = [p["canonical_solution"], wrong, wrong, p["canonical_solution"], wrong]
    res = evaluate([p], {p["task_id"]: samples}, ks=(1, 2, 10), workers=2)
    # n=5, c=2: pass@1 = c/n; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert res["pass_at_k"]["pass@1"] == pytest.approx(0.4)
    assert res["pass_at_k"]["pass@2"] == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert res["pass_at_k"]["pass@2"] == pytest.approx(0.7)
    assert "pass@10" not in res["pass_at_k"]
    assert "10 samples" in res["skipped"]["pass@10"]
    task = res["per_task"]["HumanEval/0"]
    assert (task["n"], task["correct"]) == (5, 2)
    assert [r["passed"] for r in task["results"]] == [True, False, False, True, False]
    assert [r["completion_id"] for r in task["results"]] == [0, 1, 2, 3, 4]


def test_evaluate_rejects_bad_requests(problems):
    with pytest.raises(KeyError, match="HumanEval/999"):
        evaluate(problems, {"HumanEval/999": ["    pass\n"]})
    with pytest.raises(ValueError, match="empty list"):
        evaluate(problems, {"HumanEval/0": []})
    with pytest.raises(ValueError, match="positive"):
        evaluate(problems, {"HumanEval/0": ["    pass\n"]}, ks=(0,))


@pytest.mark.slow
def test_all_canonical_solutions_pass(problems):
    res = evaluate(problems, {p["task_id"]: [p["canonical_solution"]] for p in problems}, workers=2)
    failed = {t: v["results"][0]["result"] for t, v in res["per_task"].items() if not v["correct"]}
    assert failed == {}
    assert res["pass_at_k"] == {"pass@1": 1.0} and res["num_tasks"] == 164
