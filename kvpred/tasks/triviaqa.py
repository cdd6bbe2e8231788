"""TriviaQA 1-shot exact match, read from a user-supplied copy of the data.

TriviaQA is not on any package registry, so `load_triviaqa` reads a local file in any of:
  * the official layout: one JSON object `{"Data": [...], "Version": ..., ...}` whose records
    hold "Question", "QuestionId" and "Answer": {"Value", "Aliases", ...} (the files
    `unfiltered-web-*.json`, `verified-*-dev.json`, and the rc.nocontext ones). When the file
    says `"VerifiedEval": true`, only records with `"QuestionPartOfVerifiedEval": true` are kept,
    as the official evaluation does;
  * the Hugging Face `trivia_qa` layout as JSON lines: one record a line with "question",
    "question_id" and "answer": {"value", "aliases", ...} (a JSON array of such records works
    too);
  * the same Hugging Face layout as parquet (needs pyarrow, or pandas with a parquet engine).
The layout is detected from the content; files may be gzip-compressed.

Scoring follows the official `triviaqa_evaluation.py`: both sides are normalised by
`normalize_answer` and a prediction is right when it equals any normalised alias. The prompt is
the KV Prediction paper's 1-shot format, "Question: {q}\\nAnswer:" after one worked example, and
the model's answer is its text up to the first newline, full stop or comma.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jaxserve.utils import atomic_open

STOP_STRINGS = ("\n", ".", ",")

# Characters the official script turns into spaces: ASCII punctuation (the underscore included)
# and four quote-like characters it adds. Curly double quotes are not among them.
_PUNCTUATION = frozenset(string.punctuation + "\u2018\u2019\u00b4\u0060")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"


class TriviaQAFormatError(ValueError):
    """A TriviaQA file whose content cannot be read as one of the supported layouts."""


@dataclass(frozen=True)
class QAExample:
    """One question and its accepted answers: the answer value first, then its aliases."""

    qid: str
    question: str
    answers: tuple[str, ...]


# ----------------------------------------------------------------------------- scoring


def normalize_answer(s: str) -> str:
    """The official TriviaQA normalisation.

    In order: underscores become spaces; lower-case; every ASCII punctuation character and each
    of ‘ ’ ´ ` becomes a space (none is deleted outright, so "U.S." -> "u s"); the whole words
    a, an, the become spaces; runs of whitespace collapse to one space, with none at the ends.
    """
    s = s.replace("_", " ").lower()
    s = "".join(" " if ch in _PUNCTUATION else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Iterable[str] | QAExample) -> bool:
    """Whether the normalised prediction equals any normalised answer."""
    if isinstance(answers, QAExample):
        answers = answers.answers
    if isinstance(answers, str):
        answers = (answers,)
    answers = tuple(answers)
    if not answers:
        raise ValueError("exact_match needs at least one reference answer")
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def one_shot_prompt(question: str, shot: QAExample | tuple[str, str]) -> str:
    """The paper's 1-shot prompt: one worked example, then the question to answer."""
    if isinstance(shot, QAExample):
        shot_q, shot_a = shot.question, shot.answers[0]
    else:
        shot_q, shot_a = shot
    example = f"Question: {shot_q.strip()}\nAnswer: {shot_a.strip()}"
    return f"{example}\n\nQuestion: {question.strip()}\nAnswer:"


def cut_answer(generated_text: str) -> str:
    """The answer in a generation: its text before the first stop string, stripped."""
    end = len(generated_text)
    for stop in STOP_STRINGS:
        i = generated_text.find(stop)
        if i != -1:
            end = min(end, i)
    return generated_text[:end].strip()


# ----------------------------------------------------------------------------- reading


def load_triviaqa(path: str | os.PathLike, limit: int | None = None) -> list[QAExample]:
    """Read TriviaQA questions with their answers from `path` (layout detected, see module doc).

    Returns the first `limit` examples (all when None) in file order.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, not {limit}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"TriviaQA file not found: {path}")
    if os.path.isdir(path):
        raise TriviaQAFormatError(f"{path}: is a directory; pass one TriviaQA file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _PARQUET_MAGIC:
        records = _read_parquet(path)
        return _take(_hf_examples(enumerate(records), path, "row {} (from 0)"), limit)
    text = _read_text(path, gzipped=head[:2] == _GZIP_MAGIC)
    stripped = text.lstrip()
    if not stripped:
        raise TriviaQAFormatError(f"{path}: the file is empty")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError as e:
        if not _first_line_is_object(stripped):
            raise TriviaQAFormatError(
                f"{path}: unknown layout: not valid JSON, JSON lines or parquet ({e})"
            ) from None
        return _take(_hf_examples(_json_lines(text, path), path, "line {}"), limit)
    if isinstance(whole, dict) and "Data" in whole:
        return _take(_official_examples(whole, path), limit)
    if isinstance(whole, dict) and ("question" in whole or "answer" in whole):
        return _take(_hf_examples([(1, whole)], path, "line {}"), limit)
    if isinstance(whole, list):
        return _take(_hf_examples(enumerate(whole), path, "item [{}]"), limit)
    keys = sorted(whole)[:8] if isinstance(whole, dict) else type(whole).__name__
    raise TriviaQAFormatError(
        f"{path}: unknown layout: expected the official {{'Data': [...]}} object or Hugging Face "
        f"records with 'question' and 'answer'; found {keys}"
    )


def _take(examples: Iterator[QAExample], limit: int | None) -> list[QAExample]:
    out = []
    for ex in examples:
        if limit is not None and len(out) >= limit:
            break
        out.append(ex)
    return out


def _first_line_is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text.split("\n", 1)[0]), dict)
    except json.JSONDecodeError:
        return False


def _read_text(path: str, gzipped: bool) -> str:
    try:
        if gzipped:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise TriviaQAFormatError(f"{path}: cannot be read as UTF-8 text ({e})") from None


def _json_lines(text: str, path: str) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise TriviaQAFormatError(f"{path}: line {lineno} is not valid JSON ({e})") from None


def _read_parquet(path: str) -> list[dict]:
    columns = ["question", "question_id", "answer"]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise TriviaQAFormatError(
                f"{path}: unknown layout: a Hugging Face trivia_qa parquet file has columns "
                f"{columns}; this one lacks {missing} (has {names[:8]})"
            )
        return pq.read_table(path, columns=columns).to_pylist()
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        try:
            frame = pd.read_parquet(path)
        except ImportError as e:
            raise ImportError(
                f"{path} is a parquet file: reading it needs pyarrow (`pip install pyarrow`); "
                f"pandas alone has no parquet engine ({e})"
            ) from None
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise TriviaQAFormatError(
                f"{path}: unknown layout: a Hugging Face trivia_qa parquet file has columns "
                f"{columns}; this one lacks {missing}"
            )
        return frame[columns].to_dict("records")
    raise ImportError(
        f"{path} is a parquet file: reading it needs pyarrow (`pip install pyarrow`), "
        "or convert it to JSON lines"
    )


def _strings(value: Any) -> list[str]:
    """A list of strings from a JSON list, a numpy array (pandas) or None."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _answers(value: Any, aliases: Any) -> tuple[str, ...]:
    out: list[str] = []
    for a in ([value] if isinstance(value, str) else []) + _strings(aliases):
        a = a.strip()
        if a and a not in out:
            out.append(a)
    return tuple(out)


def _where(path: str, unit: str, index: int, qid: Any) -> str:
    label = f"{path}: {unit.format(index)}"
    return f"{label} (id {qid!r})" if qid is not None else label


def _make_example(
    path: str, unit: str, index: int, qid: Any, question: Any, answer: Any, keys: tuple[str, ...]
) -> QAExample:
    """Check one record; `keys` names its (question, id, answer, value, aliases) fields."""
    q_key, id_key, a_key, v_key, al_key = keys
    where = _where(path, unit, index, qid)
    if not isinstance(question, str) or not question.strip():
        raise TriviaQAFormatError(f"{where}: has no question ('{q_key}')")
    if qid is None or (isinstance(qid, str) and not qid.strip()):
        raise TriviaQAFormatError(f"{where}: has no question id ('{id_key}')")
    if not isinstance(answer, dict):
        raise TriviaQAFormatError(
            f"{where}: has no answer ('{a_key}'); test splits ship without answers"
        )
    answers = _answers(answer.get(v_key), answer.get(al_key))
    if not answers or (answers == ("<unk>",)):
        raise TriviaQAFormatError(
            f"{where}: its answer has neither '{v_key}' nor '{al_key}' "
            "(test splits ship without answers)"
        )
    return QAExample(qid=str(qid), question=question.strip(), answers=answers)


def _official_examples(data: dict, path: str) -> Iterator[QAExample]:
    records = data["Data"]
    if not isinstance(records, list):
        raise TriviaQAFormatError(f"{path}: 'Data' should be a list of records")
    verified_only = bool(data.get("VerifiedEval", False))
    keys = ("Question", "QuestionId", "Answer", "Value", "Aliases")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise TriviaQAFormatError(f"{path}: Data[{i}] is not a JSON object")
        if verified_only and not rec.get("QuestionPartOfVerifiedEval", False):
            continue
        yield _make_example(
            path, "Data[{}]", i, rec.get("QuestionId"), rec.get("Question"), rec.get("Answer"), keys
        )


def _hf_examples(records: Iterable[tuple[int, Any]], path: str, unit: str) -> Iterator[QAExample]:
    """Examples from (record number, record) pairs in the Hugging Face layout."""
    keys = ("question", "question_id", "answer", "value", "aliases")
    for i, rec in records:
        if not isinstance(rec, dict):
            raise TriviaQAFormatError(f"{path}: {unit.format(i)} is not a JSON object")
        if "question" not in rec and "answer" not in rec:
            raise TriviaQAFormatError(
                f"{path}: unknown layout: {unit.format(i)} has neither 'question' nor 'answer' "
                f"(keys {sorted(rec)[:8]})"
            )
        yield _make_example(
            path, unit, i, rec.get("question_id"), rec.get("question"), rec.get("answer"), keys
        )


# ----------------------------------------------------------------------------- writing


def write_triviaqa(
    examples: Sequence[QAExample], path: str | os.PathLike, version: float = 1.0
) -> None:
    """Write examples in the official layout (read back unchanged by `load_triviaqa`).

    "Aliases" lists every answer, the value included, as the official files do.
    """
    data = []
    for ex in examples:
        if not ex.answers:
            raise ValueError(f"example {ex.qid!r} has no answers")
        normalized = list(dict.fromkeys(normalize_answer(a) for a in ex.answers))
        data.append(
            {
                "Answer": {
                    "Aliases": list(ex.answers),
                    "NormalizedAliases": normalized,
                    "NormalizedValue": normalize_answer(ex.answers[0]),
                    "Type": "FreeForm",
                    "Value": ex.answers[0],
                },
                "Question": ex.question,
                "QuestionId": ex.qid,
            }
        )
    doc = {"Data": data, "Domain": "Web", "VerifiedEval": False, "Version": version}
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
