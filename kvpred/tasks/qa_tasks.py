"""Closed-book QA tasks, 1-shot, exact match over aliases: TriviaQA and the synthetic set.

examples [QAExample] -> one_shot_prompt(question, shot = the first example)
    -> greedy completion, cut at newline / "." / "," -> exact_match -> mean
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kvpred.tasks import triviaqa as tqa
from kvpred.tasks.registry import Generation, Task, register_task

QA_BATCH_SIZE = 64
QA_MAX_NEW_TOKENS = 16


def default_shot(examples: Sequence[tqa.QAExample]) -> tuple[str, str]:
    """The worked example in front of every question: the task's first example (it is then
    scored like the rest, as a user of the 1-shot format would)."""
    ex = examples[0]
    return ex.question, ex.answers[0]


def qa_records(examples: Sequence[tqa.QAExample], texts: Sequence[str]) -> list[dict]:
    """One record per example: its cut answer and whether it matches an alias."""
    out = []
    for ex, text in zip(examples, texts):
        answer = tqa.cut_answer(text or "")
        out.append(
            {
                "qid": ex.qid,
                "question": ex.question,
                "prediction": answer,
                "answers": list(ex.answers),
                "correct": tqa.exact_match(answer, ex),
            }
        )
    return out


class QATask(Task):
    metric = "exact_match"

    def prompts(self, examples):
        shot = default_shot(examples)
        return [tqa.one_shot_prompt(ex.question, shot) for ex in examples]

    def generation(self) -> Generation:
        from jaxserve.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=QA_MAX_NEW_TOKENS, stop_strings=tqa.STOP_STRINGS)
        return Generation(params, QA_BATCH_SIZE)

    def score(self, examples, texts):
        records = qa_records(examples, [t[0] for t in texts])
        return sum(r["correct"] for r in records) / len(records), records


@register_task
class TriviaQATask(QATask):
    """TriviaQA from a file the user has (official or Hugging Face layout)."""

    name = "triviaqa"
    arg_help = "PATH"

    def load_all(self):
        return tqa.load_triviaqa(self.arg)


@register_task
class SyntheticQATask(QATask):
    """The held-out questions of the synthetic knowledge base the tiny models learned. A run
    also writes them in TriviaQA's layout (synthetic_qa.json), which `triviaqa:` reads back."""

    name = "synthetic_qa"

    def load_all(self):
        from kvpred.data import KnowledgeBase

        kb = KnowledgeBase(self.options.kb_entities, self.options.kb_seed)
        return kb.qa_examples("eval")

    def write_extras(self, examples, out_dir):
        tqa.write_triviaqa(examples, os.path.join(out_dir, "synthetic_qa.json"))
