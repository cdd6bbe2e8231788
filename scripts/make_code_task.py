"""Write the synthetic code task's problems as HumanEval .jsonl files.

    python scripts/make_code_task.py --out=runs/code_task                # train + heldout
    python scripts/make_code_task.py --out=runs/code_task --train=20000 --heldout=164

OUT/train.jsonl and OUT/heldout.jsonl; either is read back by
`python -m experiments.eval_kvpred --task=humaneval:OUT/heldout.jsonl`.
"""

from __future__ import annotations

import argparse
import os

from kvpred.data import code_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", type=int, default=20_000, help="train problems")
    ap.add_argument("--heldout", type=int, default=code_task.DEFAULT_HELDOUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.train < 0 or args.heldout < 0:
        ap.error("--train and --heldout must be >= 0")
    for split, n in (("train", args.train), ("heldout", args.heldout)):
        path = os.path.join(args.out, f"{split}.jsonl")
        code_task.write_jsonl(code_task.make_problems(split, n, args.seed), path)
        print(f"wrote {n} problems to {path}")


if __name__ == "__main__":
    main()
