"""Language-modelling documents that teach the knowledge base, in the evaluation's format.

``qa_prompt(question, shot=None)``: the evaluation prompt, ``"Question: {q}\\nAnswer:"``,
    optionally preceded by a solved example ``"Question: {q0}\\nAnswer: {a0}\\n\\n"``.
    Evaluation decodes greedily after it and cuts the answer at a newline, "." or ",".
``qa_documents(kb, seed=0, shots=3)``: training documents for every fact: its statements
    followed by its zero-shot QA form, ``shots`` one-shot QA forms with other facts as the
    shot, the bare QA form, and one paragraph of statements per entity. QA forms are
    ``qa_prompt(...) + " " + answer + "\\n"``, so the evaluation prompt is a prefix of them.
"""

from __future__ import annotations

import random

from kvpred.data.knowledge_base import KnowledgeBase


def qa_prompt(question: str, shot: tuple[str, str] | None = None) -> str:
    """The evaluation prompt; ``shot`` is an optional solved ``(question, answer)`` pair."""
    prefix = f"Question: {shot[0]}\nAnswer: {shot[1]}\n\n" if shot is not None else ""
    return f"{prefix}Question: {question}\nAnswer:"


def qa_documents(kb: KnowledgeBase, seed: int = 0, shots: int = 3) -> list[str]:
    """Language-modelling documents teaching every fact of ``kb`` (see the module docstring).

    Held-out facts contribute statements only, and are never used as a one-shot example.
    """
    rng = random.Random(f"kvpred-qa-docs-{kb.seed}-{seed}")
    facts = kb.facts()
    trained = [f for f in facts if not kb.is_held_out(f)]
    docs: list[str] = []
    for fact in facts:
        statements = kb.statements(fact)
        rng.shuffle(statements)
        paragraph = " ".join(statements)
        if kb.is_held_out(fact):
            docs.append(paragraph + "\n")
            continue
        question = kb.question(fact)
        docs.append(f"{paragraph}\n\n{qa_prompt(question)} {fact.answer}\n")
        docs.append(f"{qa_prompt(question)} {fact.answer}\n")
        others = [f for f in trained if f != fact]
        for _ in range(shots if others else 0):
            shot = rng.choice(others)
            docs.append(f"{qa_prompt(question, (kb.question(shot), shot.answer))} {fact.answer}\n")
    for entity in kb.entities():
        own = [f for f in facts if f.entity == entity]
        sentences = [rng.choice(kb.statements(f)) for f in own]
        rng.shuffle(sentences)
        docs.append(" ".join(sentences) + "\n")
    rng.shuffle(docs)
    return docs
