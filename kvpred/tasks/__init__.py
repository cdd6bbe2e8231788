"""Evaluation tasks for KV Prediction experiments.

triviaqa.py   TriviaQA 1-shot: read the official or Hugging Face layouts, prompt, cut, exact match
humaneval.py  HumanEval: problems, stop strings, sandboxed test runs, unbiased pass@k
"""

from kvpred.tasks.humaneval import STOP_STRINGS as HUMANEVAL_STOP_STRINGS
from kvpred.tasks.humaneval import (
    check_completion,
    check_program,
    cut_completion,
    evaluate,
    load_humaneval,
)
from kvpred.tasks.triviaqa import STOP_STRINGS as TRIVIAQA_STOP_STRINGS
from kvpred.tasks.triviaqa import (
    QAExample,
    TriviaQAFormatError,
    cut_answer,
    exact_match,
    load_triviaqa,
    normalize_answer,
    one_shot_prompt,
    write_triviaqa,
)

__all__ = [
    "HUMANEVAL_STOP_STRINGS",
    "QAExample",
    "TRIVIAQA_STOP_STRINGS",
    "TriviaQAFormatError",
    "check_completion",
    "check_program",
    "cut_answer",
    "cut_completion",
    "evaluate",
    "exact_match",
    "load_humaneval",
    "load_triviaqa",
    "normalize_answer",
    "one_shot_prompt",
    "write_triviaqa",
]
