"""Evaluation tasks: TriviaQA reading and scoring, HumanEval execution and pass@k."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import sys
import time

import pytest

from kvpred.tasks import (
    HUMANEVAL_STOP_STRINGS,
    TRIVIAQA_STOP_STRINGS,
    QAExample,
    TriviaQAFormatError,
    check_completion,
    cut_answer,
    cut_completion,
    evaluate,
    exact_match,
    load_humaneval,
    load_triviaqa,
    normalize_answer,
    one_shot_prompt,
    write_triviaqa,
)

DATA = os.path.join(os.path.dirname(__file__), "data")
OFFICIAL = os.path.join(DATA, "triviaqa_fixture.json")
HF_JSONL = os.path.join(DATA, "triviaqa_fixture_hf.jsonl")

EXPECTED = [
    QAExample(
        "fx_1",
        "Which planet of the solar system has the shortest year?",
        ("Mercury", "Planet Mercury", "Mercury (planet)", "\u263f"),
    ),
    QAExample(
        "fx_2",
        "Which French writer wrote the novel \u2018Les Mis\u00e9rables\u2019?",
        ("Victor Hugo", "Hugo, Victor", "Victor-Marie Hugo", "V. Hugo"),
    ),
    QAExample(
        "fx_3",
        "In which US city does the Golden Gate Bridge stand?",
        (
            "San Francisco",
            "San Francisco, California",
            "SF",
            "San Fransisco",
            "The City by the Bay",
        ),
    ),
    QAExample("fx_4", "What is the chemical symbol of tungsten?", ("W", "Wolfram")),
    QAExample(
        "fx_5",
        "In which 1993 film does a weatherman live the same day over and over?",
        ("Groundhog Day", "Groundhog Day (film)", "Ground Hog Day"),
    ),
]


def _official_doc(records, **top):
    return {"Data": records, "Domain": "Web", "VerifiedEval": False, "Version": 1.0, **top}


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return str(path)


# ----------------------------------------------------------------------------- TriviaQA reading


def test_official_fixture_loads_value_first_then_aliases_deduplicated():
    assert load_triviaqa(OFFICIAL) == EXPECTED
    assert load_triviaqa(OFFICIAL, limit=2) == EXPECTED[:2]
    assert load_triviaqa(OFFICIAL, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        load_triviaqa(OFFICIAL, limit=-1)


def test_hf_layouts_load_the_same_examples(tmp_path):
    assert load_triviaqa(HF_JSONL) == EXPECTED
    assert load_triviaqa(HF_JSONL, limit=3) == EXPECTED[:3]
    with open(HF_JSONL, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    # a JSON array of the same records, and a one-record JSONL file
    assert load_triviaqa(_write_json(tmp_path / "array.json", records)) == EXPECTED
    assert load_triviaqa(_write_json(tmp_path / "one.jsonl", records[3])) == [EXPECTED[3]]


def test_gzipped_files_load(tmp_path):
    for src in (OFFICIAL, HF_JSONL):
        dst = tmp_path / (os.path.basename(src) + ".gz")
        with open(src, "rb") as fin, gzip.open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        assert load_triviaqa(dst) == EXPECTED


def test_verified_files_keep_only_verified_questions(tmp_path):
    with open(OFFICIAL, encoding="utf-8") as f:
        doc = json.load(f)
    for i, rec in enumerate(doc["Data"]):
        rec["QuestionPartOfVerifiedEval"] = i % 2 == 0
    doc["VerifiedEval"] = True
    path = _write_json(tmp_path / "verified-web-dev.json", doc)
    assert load_triviaqa(path) == EXPECTED[0::2]


def test_write_then_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "synthetic.json"
    write_triviaqa(EXPECTED, path, version=1.0)
    assert load_triviaqa(path) == EXPECTED
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["Version"] == 1.0
    answer = doc["Data"][1]["Answer"]
    assert answer["Value"] == "Victor Hugo"
    assert answer["NormalizedAliases"] == [
        "victor hugo",
        "hugo victor",
        "victor marie hugo",
        "v hugo",
    ]
    with pytest.raises(ValueError, match="no answers"):
        write_triviaqa([QAExample("x", "q?", ())], tmp_path / "bad.json")


def test_parquet_without_a_reader_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "validation.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 32 + b"PAR1")
    for name in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_triviaqa(path)


def test_parquet_hf_layout_loads(tmp_path):
    import pyarrow as pa  # a test dependency (pyproject's test extras): runs, never skips
    import pyarrow.parquet as pq

    with open(HF_JSONL, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    path = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    assert load_triviaqa(path) == EXPECTED


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "unfiltered-web-dev.json"
    with pytest.raises(FileNotFoundError, match="unfiltered-web-dev.json"):
        load_triviaqa(missing)


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"Version": 1.0, "Questions": []}', r"unknown layout.*Questions"),
        ("just some text\n", "unknown layout"),
        ("", "empty"),
        ('{"id": 1, "text": "q"}\n{"id": 2, "text": "r"}\n', r"unknown layout: line 1"),
        ('{"Data": {"a": 1}}', "'Data' should be a list"),
    ],
)
def test_unknown_layouts_are_rejected(tmp_path, content, match):
    path = tmp_path / "file.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TriviaQAFormatError, match=match) as info:
        load_triviaqa(path)
    assert "file.json" in str(info.value)


def test_records_without_answer_or_question_are_named(tmp_path):
    good = {"Question": "Q0?", "QuestionId": "q0", "Answer": {"Value": "A", "Aliases": []}}
    no_answer = {"Question": "Q1?", "QuestionId": "q1"}
    path = _write_json(tmp_path / "test-without-answers.json", _official_doc([good, no_answer]))
    with pytest.raises(TriviaQAFormatError, match=r"Data\[1\] \(id 'q1'\): has no answer"):
        load_triviaqa(path)

    empty_answer = {"Question": "Q1?", "QuestionId": "q1", "Answer": {"Aliases": []}}
    path = _write_json(tmp_path / "a.json", _official_doc([good, empty_answer]))
    with pytest.raises(TriviaQAFormatError, match=r"Data\[1\] .*neither 'Value' nor 'Aliases'"):
        load_triviaqa(path)

    no_question = {"QuestionId": "q2", "Answer": {"Value": "B"}}
    path = _write_json(tmp_path / "b.json", _official_doc([good, good, no_question]))
    with pytest.raises(TriviaQAFormatError, match=r"Data\[2\] \(id 'q2'\): has no question"):
        load_triviaqa(path)

    # Hugging Face test split: answers hidden behind "<unk>"; errors name the line
    hidden = {"question": "Q?", "question_id": "t1", "answer": {"value": "<unk>", "aliases": []}}
    lines = [{"question": "Q0?", "question_id": "t0", "answer": {"value": "A"}}, hidden]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    with pytest.raises(TriviaQAFormatError, match=r"test\.jsonl: line 2 \(id 't1'\)"):
        load_triviaqa(path)


# ----------------------------------------------------------------------------- TriviaQA scoring


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The Beatles", "beatles"),
        ("A Tale of Two Cities", "tale of two cities"),
        ("an apple a day", "apple day"),
        ("AN", ""),
        ("Theatre", "theatre"),  # articles only as whole words
        ("the\u00f1", "the\u00f1"),  # \b is unicode-aware: ñ is a word character
        ("U.S.A.", "u s"),  # punctuation becomes a space, so the final "a" is an article
        ("the.a.an", ""),
        ("Hugo, Victor", "hugo victor"),
        ("Mr. & Mrs. Smith", "mr mrs smith"),
        ("AT&T", "at t"),
        ("o'the", "o"),
        ("Rock-n-Roll", "rock n roll"),
        ("rock_and_roll", "rock and roll"),
        ("The_Who", "who"),
        ("100%", "100"),
        ("x+y=z", "x y z"),
        # the four extra characters of the official script: ‘ ’ ´ `
        ("Don\u2019t Stop", "don t stop"),
        ("\u2018Quoted\u2019", "quoted"),
        ("caf\u00e9\u00b4s", "caf\u00e9 s"),
        ("`tick`", "tick"),
        # curly double quotes and other non-ASCII symbols are kept
        ("\u201cCurly double\u201d", "\u201ccurly double\u201d"),
        ("\u00a35", "\u00a35"),
        ("\u0391\u0392\u0393", "\u03b1\u03b2\u03b3"),
        ("\u0130stanbul", "i\u0307stanbul"),  # str.lower, not casefold
        ("  Spaces\tand\nnewlines  ", "spaces and newlines"),
        ("a\u00a0the\u2003b", "b"),  # unicode whitespace collapses too
        ("", ""),
    ],
)
def test_normalize_answer_matches_the_official_script(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_is_the_max_over_aliases():
    hugo = EXPECTED[1]
    assert exact_match("Victor Hugo", hugo)
    assert exact_match(" hugo victor ", hugo.answers)  # alias "Hugo, Victor"
    assert exact_match("Victor Marie Hugo.", hugo)  # alias "Victor-Marie Hugo"
    assert exact_match("v hugo", hugo)
    assert not exact_match("Hugo", hugo)
    assert not exact_match("Victor Hugo wrote it", hugo)
    assert exact_match("the Mercury", EXPECTED[0])
    assert exact_match("mercury planet", EXPECTED[0])
    assert exact_match("City by the Bay", EXPECTED[2])
    assert exact_match("Mercury", "mercury")
    assert not exact_match("", EXPECTED[3])
    with pytest.raises(ValueError, match="at least one"):
        exact_match("x", [])


def test_one_shot_prompt_format():
    q = "Which planet is known as the red planet?"
    want = (
        "Question: What is the chemical symbol of tungsten?\nAnswer: W\n\n"
        "Question: Which planet is known as the red planet?\nAnswer:"
    )
    assert one_shot_prompt(q, EXPECTED[3]) == want
    assert one_shot_prompt(q, ("What is the chemical symbol of tungsten?", "W")) == want


def test_cut_answer_stops_at_newline_full_stop_or_comma():
    assert TRIVIAQA_STOP_STRINGS == ("\n", ".", ",")
    assert cut_answer(" Mars\n\nQuestion: next") == "Mars"
    assert cut_answer(" Washington, D.C.") == "Washington"
    assert cut_answer(" Victor Hugo. He wrote") == "Victor Hugo"
    assert cut_answer("  Groundhog Day  ") == "Groundhog Day"
    assert cut_answer("\nMars") == ""
    assert cut_answer("") == ""
    # end to end: cut, then score
    assert exact_match(cut_answer(" the planet Mercury, closest"), EXPECTED[0])


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
