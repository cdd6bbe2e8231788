#!/usr/bin/env bash
# Scheduler comparison on a heavy-tailed trace at high load with the `small` model: every
# registered scheduler on one trace, then the JCT ratios the FastServe comparison is about
# (printed under the table; `python scripts/report.py OUT_DIR/results.json` renders it again).
# Memory-bound on purpose (300 pages of 16 tokens for a batch of 16): requests ask for up to
# 1000 tokens, so Orca-style fcfs, which reserves that much per admission, runs few at once,
# while the others allocate pages as tokens come. Output lengths are lognormal with sigma 1.5
# (heavy-tailed: median 69, mean 178 tokens, coefficient of variation 1.4 on this trace);
# OUTPUT_SIGMA=0.9 gives the ShareGPT-like default instead (coefficient of variation 1.0).
# `scripts/sim_policies.py` (same flags, no model) shows how the ratios move with load,
# memory and the length distribution.
#   [OUTPUT_SIGMA=1.5] bash scripts/bench_serve.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/bench_serve}
python -m experiments.serve --model=small \
  --workload=sharegpt_synth --scale=0.5 --output_sigma="${OUTPUT_SIGMA:-1.5}" \
  --max_prompt_len=256 --max_output_len=1000 \
  --rate=12 --num_requests=200 --max_batch=16 --kv_pages=300 --seed=0 --out="$out"
