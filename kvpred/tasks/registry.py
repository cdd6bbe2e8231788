"""The evaluation tasks by name: what `experiments.eval_kvpred --task=...` runs.

    make_task("synthetic_qa" | "triviaqa:PATH" | "humaneval", TaskOptions(...)) -> Task
    task.load(limit)                  -> examples
    task.prompts(examples)            -> one prompt text per example
    task.generation()                 -> how to generate (SamplingParams, batch size, samples)
    task.generations()                -> every pass to generate (default: [generation()])
    task.score(examples, texts)       -> (metric value, one record per example)
    task.extra_metrics(records)       -> more figures for results (e.g. sampled pass@k)
    task.metric                       the metric's name in results ("exact_match", "pass@1")

`kvpred.evaluate.run_task` drives any task through the same generation path, so the
experiment, the report and the evaluation code hold no per-task branches: a new task is one
module with a `Task` subclass decorated with `@register_task`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # tasks import jax only when they generate
    from jaxserve.sampling import SamplingParams

# The size of the synthetic knowledge base the shipped `tiny` models learned.
DEFAULT_KB_ENTITIES = 1600


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    kb_entities: int = DEFAULT_KB_ENTITIES  # synthetic_qa: entities of the knowledge base
    kb_seed: int = 0  # synthetic_qa: its seed (as in training)
    samples: int = 0  # pass@k tasks: sampled completions per prompt (0: greedy pass@1 only)
    temperature: float = 0.8  # pass@k tasks: the sampled completions' temperature


@dataclasses.dataclass(frozen=True)
class Generation:
    params: SamplingParams  # stop strings, lengths, temperature; chunk i gets seed + i
    batch_size: int  # prompts per generate call
    samples: int = 1  # completions per prompt, generated next to each other


class Task(abc.ABC):
    """One evaluation task. `spec` is what the user wrote ("triviaqa:data/web-dev.json"),
    `arg` the part after the colon (empty for tasks that take none)."""

    name: ClassVar[str]  # the registry key, the part of a spec before ":"
    metric: ClassVar[str]  # the metric's key in results.json
    arg_help: ClassVar[str | None] = None  # what follows the colon, when the task takes one
    arg_optional: ClassVar[bool] = False  # the colon and argument may be left out

    def __init__(self, spec: str, arg: str, options: TaskOptions):
        self.spec, self.arg, self.options = spec, arg, options

    @abc.abstractmethod
    def load_all(self) -> list[Any]:
        """Every example, in a fixed order."""

    def load(self, limit: int | None = None) -> list[Any]:
        """The first `limit` examples (all when None)."""
        data = self.load_all()
        return data[:limit] if limit else data

    @abc.abstractmethod
    def prompts(self, examples: Sequence[Any]) -> list[str]:
        """The model's input text for each example."""

    @abc.abstractmethod
    def generation(self) -> Generation:
        """How to generate the completions `score` expects."""

    def generations(self) -> list[Generation]:
        """Every pass of generation a score needs, in order (e.g. greedy, then sampled)."""
        return [self.generation()]

    @abc.abstractmethod
    def score(self, examples: Sequence[Any], texts: Sequence[Sequence[str]]) -> tuple[float, list]:
        """texts[i]: the generated texts for examples[i], every pass's in the order of
        `generations()` -> (metric value, per-example records, each with what was predicted
        and whether it was right)."""

    def extra_metrics(self, records: Sequence[dict]) -> dict[str, float]:
        """Figures beyond `metric` that `score`'s records give (none by default)."""
        return {}

    def write_extras(self, examples: Sequence[Any], out_dir: str | os.PathLike) -> None:
        """Files a run writes next to its results, if any (e.g. the question set)."""
        return None


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_specs() -> list[str]:
    """How each registered task is named on a command line."""
    out = []
    for n, c in TASKS.items():
        if c.arg_help:
            out += [n] if c.arg_optional else []
            out.append(f"{n}:{c.arg_help}")
        else:
            out.append(n)
    return out


def make_task(spec: str, options: TaskOptions | None = None) -> Task:
    """A task from its spec. Raises ValueError naming the known tasks."""
    name, sep, arg = spec.partition(":")
    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"--task: unknown {spec!r}; one of {', '.join(task_specs())}")
    if cls.arg_help and not arg and (sep or not cls.arg_optional):
        raise ValueError(f"--task: {name} needs an argument, {name}:{cls.arg_help}")
    if not cls.arg_help and sep:
        raise ValueError(f"--task: {name} takes no argument, got {spec!r}")
    return cls(spec, arg, options or TaskOptions())
