"""TriviaQA reading: the official and Hugging Face layouts, and errors that name the file."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys

import pytest
from triviaqa_helpers import EXPECTED

from kvpred.tasks import QAExample, TriviaQAFormatError, load_triviaqa, write_triviaqa

DATA = os.path.join(os.path.dirname(__file__), "data")
OFFICIAL = os.path.join(DATA, "triviaqa_fixture.json")
HF_JSONL = os.path.join(DATA, "triviaqa_fixture_hf.jsonl")


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
