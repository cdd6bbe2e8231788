#!/usr/bin/env bash
# KV Prediction on the synthetic code task, end to end on the CPU:
#   1. `tiny` and `tiny-aux` trained further as language models on a mix of the code task's
#      train split, the QA knowledge base and stdlib code (the mix: DATA), starting from the
#      directories BASE_INIT and AUX_INIT (default: the shipped weights, which are this stage's
#      output; the QA-only weights it started from: `git archive 59c2720 jaxserve/assets/models`);
#   2. the layer-pruned baseline 0.5 (fine-tuned), the KVP-LP 0.5 and KVP-C predictors;
#   3. the fair auxiliary-only baseline: the auxiliary trained as many steps again alone as
#      the KVP-C run trains it;
#   4. every variant on the held-out code problems: greedy pass@1, sampled pass@k (SAMPLES at
#      temperature 0.8), TTFT FLOPs and measured TTFT at the problems' prompt length.
#   bash scripts/kvpred_code_pipeline.sh [RUNS_DIR] [STEPS_LM] [STEPS_KVP] [STEPS_KVP_C] \
#     [DATA] [SAMPLES] [LIMIT]
# (LIMIT: evaluate the first LIMIT held-out problems; default all 164. KVP_PREFIX: the KVP-LP
# run's --predicted_prefix, all (the paper's, default) | random | mixed.)
# The two chains (base side, auxiliary side) run side by side; re-running resumes each stage.
set -euo pipefail
runs=${1:-runs/code}
lm_steps=${2:-2000}
kvp_steps=${3:-600}
kvp_c_steps=${4:-400}
data=${5:-synthetic_qa:0.4,synthetic_code:0.55,stdlib_code:0.05}
samples=${6:-4}
limit=${7:-164}
common=(--data="$data" --seq_len=192 --log_every=25)
ft=(--lr=1e-3 --warmup_steps=25)
base_init=${BASE_INIT:-jaxserve/assets/models/tiny}
aux_init=${AUX_INIT:-jaxserve/assets/models/tiny-aux}
kvp_prefix=${KVP_PREFIX:-all}
(
  python -m experiments.train_lm --init_from="$base_init" --steps="$lm_steps" "${ft[@]}" \
    "${common[@]}" --workdir="$runs/lm_tiny"
  python -m experiments.train_lm --lp_from="$runs/lm_tiny/final" --lp_fraction=0.5 \
    --steps="$kvp_steps" "${ft[@]}" "${common[@]}" --workdir="$runs/lp_tiny"
  python -m experiments.train_kvpred --base="$runs/lm_tiny/final" --aux=lp:0.5 \
    --steps="$kvp_steps" --predicted_prefix="$kvp_prefix" "${common[@]}" --workdir="$runs/kvp_lp"
) &
base_chain=$!
(
  python -m experiments.train_lm --init_from="$aux_init" --steps="$lm_steps" "${ft[@]}" \
    "${common[@]}" --workdir="$runs/lm_tiny_aux"
  python -m experiments.train_lm --init_from="$runs/lm_tiny_aux/final" --steps="$kvp_c_steps" \
    "${ft[@]}" "${common[@]}" --workdir="$runs/lm_tiny_aux_more"
  until [ -f "$runs/lm_tiny/summary.json" ]; do sleep 10; done   # the base is trained
  python -m experiments.train_kvpred --base="$runs/lm_tiny/final" \
    --aux=c:"$runs/lm_tiny_aux/final" --steps="$kvp_c_steps" --kv_loss_reduce=mean \
    "${common[@]}" --workdir="$runs/kvp_c"
) &
aux_chain=$!
wait "$base_chain"
wait "$aux_chain"
python -m experiments.eval_kvpred --base="$runs/lm_tiny/final" \
  --variants=base,aux_only:"$runs/lm_tiny_aux/final",aux_only:"$runs/lm_tiny_aux_more/final",lp_baseline:0.25,lp_baseline:0.75,lp_baseline:"$runs/lp_tiny/final",kvp:"$runs/kvp_lp/final",kvp:"$runs/kvp_c/final" \
  --task=synthetic_code --samples="$samples" --limit="$limit" --out="$runs/eval_code"
