"""How the failed completions of an `eval_kvpred --task=synthetic_code` run fail.

    python scripts/code_failures.py runs/code/eval_code_1200/results.json [MORE.json ...]

For each variant: greedy pass@1, the failed problems, and how many of those failed
completions have fewer non-empty lines than the problem's canonical solution (a completion
that stops before doing every step the docstring lists).
"""

from __future__ import annotations

import argparse
import json

from kvpred.data import code_task


def _lines(code: str) -> int:
    return sum(1 for line in code.split("\n") if line.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="eval_kvpred results.json files")
    args = p.parse_args()
    canonical = {}
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        if not str(data.get("task", "")).startswith("synthetic_code"):
            raise SystemExit(f"{path}: not a synthetic_code evaluation (task {data.get('task')!r})")
        if not canonical:
            problems = code_task.make_problems("heldout", data["num_examples"])
            canonical = {q["task_id"]: q["canonical_solution"] for q in problems}
        for name, v in data["variants"].items():
            fails = [x for x in v["predictions"] if not x["correct"]]
            short = sum(
                _lines(x["completions"][0]) < _lines(canonical[x["task_id"]]) for x in fails
            )
            print(
                f"{path}: {name}: pass@1 {v['pass@1']:.3f}, {len(fails)} failed, "
                f"{short} of them with fewer lines than the solution"
            )


if __name__ == "__main__":
    main()
