"""Evaluation tasks for KV Prediction experiments.

registry.py       Task (load, prompts, generation, score, metric), register_task, make_task
qa_tasks.py       synthetic_qa and triviaqa:PATH, 1-shot exact match
humaneval_task.py humaneval[:PATH] and synthetic_code: executed greedy pass@1, sampled pass@k
triviaqa.py       TriviaQA: read the official or Hugging Face layouts, prompt, cut, exact match
humaneval.py      HumanEval: problems, stop strings, sandboxed test runs, unbiased pass@k
"""

from kvpred.tasks import humaneval_task, qa_tasks  # noqa: F401 (they register their tasks)
from kvpred.tasks.humaneval import STOP_STRINGS as HUMANEVAL_STOP_STRINGS
from kvpred.tasks.humaneval import (
    check_completion,
    check_program,
    cut_completion,
    evaluate,
    load_humaneval,
)
from kvpred.tasks.registry import TASKS, Task, TaskOptions, make_task, register_task, task_specs
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
    "TASKS",
    "QAExample",
    "TRIVIAQA_STOP_STRINGS",
    "Task",
    "TaskOptions",
    "TriviaQAFormatError",
    "check_completion",
    "check_program",
    "cut_answer",
    "cut_completion",
    "evaluate",
    "exact_match",
    "load_humaneval",
    "load_triviaqa",
    "make_task",
    "normalize_answer",
    "one_shot_prompt",
    "register_task",
    "task_specs",
    "write_triviaqa",
]
