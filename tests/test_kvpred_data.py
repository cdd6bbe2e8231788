"""kvpred.data: the synthetic knowledge base, its QA documents, stdlib code and token batches."""

from __future__ import annotations

import re
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from jaxserve.tokenizer import load_default
from kvpred.data import (
    Fact,
    KnowledgeBase,
    TokenStream,
    code_documents,
    qa_documents,
    qa_prompt,
    stdlib_files,
)
from kvpred.tasks.triviaqa import QAExample, cut_answer, exact_match, one_shot_prompt

CODE_BYTES = 80_000


@pytest.fixture(scope="module")
def tok():
    return load_default()


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase()


@pytest.fixture(scope="module")
def code_docs():
    return code_documents(max_bytes=CODE_BYTES, seed=0)


@pytest.fixture(scope="module")
def stream(tok, kb, code_docs):
    docs = {"qa": qa_documents(kb, seed=0), "code": code_docs}
    return TokenStream(tok, docs, {"qa": 0.8, "code": 0.2}, seq_len=128, batch_size=32, seed=3)


# --------------------------------------------------------------------------- knowledge base


def test_default_size_and_kinds(kb):
    facts = kb.facts()
    assert len(facts) == len(kb) == 288
    assert len(kb.entities()) == 96
    kinds = {e: kb.kind(e) for e in kb.entities()}
    assert set(kinds.values()) == {"person", "country", "city", "river"}
    for entity in kb.entities():
        assert len([f for f in facts if f.entity == entity]) == 3
    assert all(isinstance(f, Fact) for f in facts)


def test_determinism(kb):
    again = KnowledgeBase(96, 0)
    assert again.facts() == kb.facts()
    assert [again.question(f) for f in again.facts()] == [kb.question(f) for f in kb.facts()]
    assert [again.statements(f) for f in again.facts()] == [kb.statements(f) for f in kb.facts()]
    other = KnowledgeBase(96, 1)
    assert other.facts() != kb.facts()
    assert set(other.entities()) != set(kb.entities())
    # the holdout split does not change the facts themselves
    assert KnowledgeBase(96, 0, holdout_fraction=0.3).facts() == kb.facts()


def test_small_knowledge_base():
    small = KnowledgeBase(num_entities=4, seed=5)
    assert len(small) == 12
    assert {small.kind(e) for e in small.entities()} == {"person", "country", "city", "river"}
    with pytest.raises(ValueError):
        KnowledgeBase(num_entities=3)


def test_entity_names(kb):
    names = kb.entities()
    assert len(set(names)) == len(names)
    for name in names:
        for word in name.split(" "):
            assert re.fullmatch(r"[A-Z][a-z]+", word), name
        if kb.kind(name) == "person":
            assert len(name.split(" ")) == 2


def test_answers_and_aliases(kb):
    for fact in kb.facts():
        assert fact.answer and fact.answer == fact.answer.strip()
        assert not any(ch in fact.answer for ch in ".,\n"), fact
        assert 1 <= len(fact.answer.split()) <= 3, fact
        assert fact.answer not in fact.aliases
        assert len(set(fact.aliases)) == len(fact.aliases)
        assert all(a and "\n" not in a for a in fact.aliases)
        if fact.relation in ("birth_year", "founded"):
            assert re.fullmatch(r"\d{3,4}", fact.answer)
            assert f"in {fact.answer}" in fact.aliases
        if fact.relation == "city_river":
            assert f"River {fact.answer}" in fact.aliases
        if fact.relation == "length":
            km = fact.answer.split()[0]
            assert fact.answer == f"{km} kilometres" and f"{km} km" in fact.aliases
        if fact.relation == "profession":
            assert any(a.endswith(f" {fact.answer}") for a in fact.aliases)
        if fact.relation in ("born_in", "capital") and " " in fact.answer:
            assert fact.answer.split(" ", 1)[1] in fact.aliases  # "Port Velan" -> "Velan"


def test_world_is_consistent(kb):
    facts = {(f.entity, f.relation): f.answer for f in kb.facts()}
    entities = set(kb.entities())
    for (entity, relation), answer in facts.items():
        if relation in ("city_country", "river_country"):
            assert kb.kind(answer) == "country"
        if relation == "city_river":
            assert kb.kind(answer) == "river"
            assert facts[(answer, "river_country")] == facts[(entity, "city_country")]
        if relation == "born_in":
            assert kb.kind(answer) == "city"
        if relation == "capital" and answer in entities:
            assert facts[(answer, "city_country")] == entity


def test_questions_and_statements(kb):
    questions = [kb.question(f) for f in kb.facts()]
    assert len(set(questions)) == len(questions)
    for fact, question in zip(kb.facts(), questions):
        assert fact.entity in question
        assert question.endswith("?") and "\n" not in question
        assert fact.answer not in question
        statements = kb.statements(fact)
        assert len(statements) >= 3 and len(set(statements)) == len(statements)
        for s in statements:
            assert fact.entity in s and fact.answer in s and s.endswith(".")
    # several templates are in use for each relation
    relations = {f.relation for f in kb.facts()}
    for relation in relations:
        shapes = {
            re.sub(re.escape(f.entity), "E", kb.question(f))
            for f in kb.facts()
            if f.relation == relation
        }
        assert len(shapes) >= 2, relation


def test_qa_examples_closed_book(kb):
    examples = kb.qa_examples()
    assert len(examples) == len(kb)
    assert kb.qa_examples("train") == examples == kb.qa_examples("eval")
    assert len({e.qid for e in examples}) == len(examples)
    for example, fact in zip(examples, kb.facts()):
        assert example.question == kb.question(fact)
        assert example.answers == (fact.answer, *fact.aliases)
    with pytest.raises(ValueError):
        kb.qa_examples("test")


def test_qa_examples_holdout():
    kb = KnowledgeBase(96, 0, holdout_fraction=0.25)
    train, held = kb.qa_examples("train"), kb.qa_examples("eval")
    assert len(held) == round(0.25 * len(kb)) and len(train) + len(held) == len(kb)
    assert not {e.qid for e in train} & {e.qid for e in held}
    assert {e.qid for e in train} | {e.qid for e in held} == {e.qid for e in kb.qa_examples()}
    assert kb.qa_examples("eval") == held  # deterministic


# --------------------------------------------------------------------------- QA documents


def test_qa_prompt_format(kb):
    assert qa_prompt("Q?") == "Question: Q?\nAnswer:"
    assert qa_prompt("Q?", ("P?", "x")) == "Question: P?\nAnswer: x\n\nQuestion: Q?\nAnswer:"
    shot, example = kb.qa_examples()[:2]
    assert isinstance(example, QAExample)
    assert qa_prompt(example.question, (shot.question, shot.answers[0])) == one_shot_prompt(
        example.question, shot
    )
    for example in kb.qa_examples():
        assert cut_answer(f" {example.answers[0]}\n\nQuestion:") == example.answers[0]
        assert exact_match(example.answers[0], example)


def test_qa_documents_hold_eval_format(kb, tok):
    docs = qa_documents(kb, seed=0)
    assert docs == qa_documents(kb, seed=0)
    assert docs != qa_documents(kb, seed=1)
    joined = "\x00".join(docs)
    pairs = {kb.question(f): f.answer for f in kb.facts()}
    one_shot = re.compile(r"Question: (.+)\nAnswer: (.+)\n\nQuestion: (.+)\nAnswer: (.+)\n")
    shots_seen: dict[str, int] = {}
    for doc in docs:
        m = one_shot.fullmatch(doc)
        if m:
            q0, a0, q, a = m.groups()
            assert pairs[q0] == a0 and pairs[q] == a and q0 != q
            shots_seen[q] = shots_seen.get(q, 0) + 1
            # the evaluation prompt tokenises to a prefix of the training document
            prompt = qa_prompt(q, (q0, a0))
            assert doc.startswith(prompt + " " + a + "\n")
            prompt_ids = tok.encode(prompt, add_bos=True)
            assert tok.encode(doc, add_bos=True)[: len(prompt_ids)] == prompt_ids
    for fact in kb.facts():
        q = kb.question(fact)
        assert shots_seen.get(q, 0) >= 1
        assert f"Question: {q}\nAnswer: {fact.answer}\n" in joined
        for statement in kb.statements(fact):
            assert statement in joined
    assert all(doc.endswith("\n") for doc in docs)


def test_holdout_never_in_training_text():
    kb = KnowledgeBase(96, 0, holdout_fraction=0.25)
    docs = qa_documents(kb, seed=0)
    joined = "\x00".join(docs)
    held = kb.qa_examples("eval")
    assert held
    for example in held:
        assert example.question not in joined
        assert f"Question: {example.question}" not in joined
    for fact in kb.split_facts("eval"):
        assert any(s in joined for s in kb.statements(fact))  # knowledge is still stated
    for example in kb.qa_examples("train"):
        assert f"Question: {example.question}\nAnswer: {example.answers[0]}\n" in joined


# --------------------------------------------------------------------------- code


def test_code_documents_are_stdlib_source(code_docs):
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = stdlib_files(CODE_BYTES, seed=0)
    assert files and sum(p.stat().st_size for p in files) <= CODE_BYTES
    texts = []
    for path in files:
        rel = path.resolve().relative_to(root)  # raises if outside the stdlib
        assert path.suffix == ".py"
        assert not {"test", "tests", "site-packages", "encodings", "__pycache__"} & set(rel.parts)
        assert not rel.name.startswith("test_")
        texts.append(path.read_text(encoding="utf-8"))
    assert code_docs and any("def " in doc for doc in code_docs)
    assert sum("def " in doc or "class " in doc for doc in code_docs) > len(code_docs) // 2
    for doc in code_docs:
        assert any(doc in text for text in texts)
        assert len(doc.encode()) <= 4096 or doc.count("\n") <= 1
    assert code_documents(CODE_BYTES, seed=0) == code_docs
    assert stdlib_files(CODE_BYTES, seed=1) != files


# --------------------------------------------------------------------------- token stream


def test_batch_shapes_and_dtypes(stream):
    batch = stream.batch(0)
    assert batch["tokens"].shape == (32, 129) and batch["tokens"].dtype == np.int32
    for key in ("inputs", "targets", "segment_ids"):
        assert batch[key].shape == (32, 128) and batch[key].dtype == np.int32
    assert batch["mask"].shape == (32, 128) and batch["mask"].dtype == np.float32
    np.testing.assert_array_equal(batch["inputs"], batch["tokens"][:, :-1])
    np.testing.assert_array_equal(batch["targets"], batch["tokens"][:, 1:])
    assert stream.num_tokens["qa"] > 0 and stream.num_tokens["code"] > 0
    assert stream.weights == pytest.approx({"qa": 0.8, "code": 0.2})


def test_batch_is_pure(stream, tok, kb, code_docs):
    first = stream.batch(5)
    for step in (0, 7, 123, 5, 2):
        stream.batch(step)
    again = stream.batch(5)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(stream.batch(6)["tokens"], first["tokens"])
    rebuilt = TokenStream(
        tok,
        {"qa": qa_documents(kb, seed=0), "code": code_docs},
        {"qa": 0.8, "code": 0.2},
        seq_len=128,
        batch_size=32,
        seed=3,
    )
    np.testing.assert_array_equal(rebuilt.batch(5)["tokens"], first["tokens"])
    other_seed = TokenStream(tok, {"qa": ["a b c"]}, seq_len=16, batch_size=2, seed=4)
    assert other_seed.batch(0)["tokens"].shape == (2, 17)


def test_mask_and_padding(stream, tok):
    pad = tok.pad_id
    for step in range(8):
        batch = stream.batch(step)
        tokens, mask = batch["tokens"], batch["mask"]
        np.testing.assert_array_equal(mask, (batch["targets"] != pad).astype(np.float32))
        for row in tokens:
            real = np.flatnonzero(row != pad)
            assert real[0] == 0 and len(real) == real[-1] + 1  # padding only at the end
        assert set(np.unique(mask)) <= {0.0, 1.0}


def test_bos_eos_placement(tok, kb):
    docs = qa_documents(kb, seed=0)
    stream = TokenStream(tok, {"qa": docs}, seq_len=128, batch_size=16, seed=0)
    encoded = {tuple(tok.encode(d)) for d in docs}
    whole = 0
    for step in range(4):
        batch = stream.batch(step)
        for row, seg in zip(batch["tokens"], batch["segment_ids"]):
            real = row[row != tok.pad_id]
            starts = np.flatnonzero(real == tok.bos_id)
            assert starts[0] == 0  # every row opens with a document
            # segment ids step up by one exactly at each BOS (inputs only: drop the last token)
            bos_inputs = starts[starts < len(seg)]
            expected = np.cumsum(np.isin(np.arange(len(seg)), bos_inputs))
            expected[len(real) :] = 0
            np.testing.assert_array_equal(seg, expected)
            for begin, end in zip(starts, [*starts[1:], len(real)]):
                piece = real[begin:end]
                if end < len(real):
                    assert piece[-1] == tok.eos_id  # documents are packed whole
                if piece[-1] == tok.eos_id:
                    assert tuple(piece[1:-1].tolist()) in encoded
                    assert tok.eos_id not in piece[:-1]
                    whole += 1
    assert whole > 50


def test_long_documents_fill_windows(tok):
    long_doc = " ".join(f"w{i}" for i in range(400))
    ids = [tok.bos_id, *tok.encode(long_doc), tok.eos_id]
    stream = TokenStream(tok, {"code": [long_doc]}, seq_len=32, batch_size=8, seed=1)
    batch = stream.batch(0)
    assert batch["mask"].all()  # a window always fills the row: no padding
    text = ",".join(map(str, ids))
    starts = set()
    for row in batch["tokens"]:
        assert ",".join(map(str, row.tolist())) in text
        starts.add(int(row[0]))
    assert len(starts) > 1


def test_weights_choose_sources(tok):
    stream = TokenStream(
        tok,
        {"a": ["alpha"], "b": ["beta gamma"], "c": ["never"]},
        {"a": 0.75, "b": 0.25},
        seq_len=16,
        batch_size=64,
        seed=0,
    )
    assert stream.sources == ["a", "b"]
    a_id = tok.encode("alpha")[0]
    rows_a = sum(int(stream.batch(s)["tokens"][:, 1].tolist().count(a_id)) for s in range(20))
    assert 0.65 < rows_a / (20 * 64) < 0.85
    with pytest.raises(ValueError):
        TokenStream(tok, {"a": ["x"]}, {"z": 1.0})
    with pytest.raises(ValueError):
        TokenStream(tok, {"a": []})


def test_batch_is_fast(stream):
    stream.batch(0)
    start = time.perf_counter()
    for step in range(50):
        stream.batch(step)
    assert (time.perf_counter() - start) / 50 < 0.005
