#!/usr/bin/env bash
# KV Prediction end to end on the CPU, the paper's comparison at laptop scale:
#   1. train the base (tiny) and a C-type auxiliary model (tiny-aux) as language models on
#      the synthetic QA knowledge base + stdlib code;
#   2. layer-pruned baselines: the base with every 2nd / every 4th layer removed, fine-tuned;
#   3. KV predictors: LP 0.5 and 0.75 (aux = the base's kept layers) and C (aux = tiny-aux,
#      and the mid-size tiny-aux-m). A C predictor starts from a least-squares fit (the default
#      --predictor_init) and trains longer, with the KV loss averaged over layers;
#   4. the fair auxiliary-only baselines: each C auxiliary model trained as many steps again
#      as its predictor run trains it, as a language model alone (same data and schedule);
#   5. evaluate every variant on synthetic QA: exact match, TTFT FLOPs, measured TTFT;
#   6. TTFT again at 512-token prompts.
#   bash scripts/kvpred_pipeline.sh [RUNS_DIR] [STEPS_LM] [STEPS_KVP] [KB_ENTITIES] [DATA] \
#     [STEPS_KVP_C]
# Re-running resumes every stage from its workdir's checkpoints.
set -euo pipefail
runs=${1:-runs}
lm_steps=${2:-3000}
kvp_steps=${3:-600}
kb=${4:-1600}
data=${5:-synthetic_qa:0.9,stdlib_code:0.1}
kvp_c_steps=${6:-4800}
common=(--kb_entities="$kb" --data="$data")
python -m experiments.train_lm --model=tiny --steps="$lm_steps" "${common[@]}" --workdir="$runs/lm_tiny"
python -m experiments.train_lm --model=tiny-aux --steps="$lm_steps" "${common[@]}" --workdir="$runs/lm_tiny_aux"
python -m experiments.train_lm --model=tiny-aux-m --steps="$lm_steps" "${common[@]}" --workdir="$runs/lm_tiny_aux_m"
python -m experiments.train_lm --lp_from="$runs/lm_tiny/final" --lp_fraction=0.5 \
  --steps="$kvp_steps" "${common[@]}" --lr=1e-3 --warmup_steps=50 --workdir="$runs/lp_tiny"
python -m experiments.train_lm --lp_from="$runs/lm_tiny/final" --lp_fraction=0.75 \
  --steps="$kvp_steps" "${common[@]}" --lr=1e-3 --warmup_steps=50 --workdir="$runs/lp75_tiny"
python -m experiments.train_kvpred --base="$runs/lm_tiny/final" --aux=lp:0.5 \
  --steps="$kvp_steps" "${common[@]}" --workdir="$runs/kvp_lp"
python -m experiments.train_kvpred --base="$runs/lm_tiny/final" --aux=lp:0.75 \
  --steps="$kvp_steps" "${common[@]}" --workdir="$runs/kvp_lp75"
python -m experiments.train_kvpred --base="$runs/lm_tiny/final" \
  --aux=c:"$runs/lm_tiny_aux/final" --steps="$kvp_c_steps" --kv_loss_reduce=mean "${common[@]}" \
  --workdir="$runs/kvp_c"
python -m experiments.train_kvpred --base="$runs/lm_tiny/final" \
  --aux=c:"$runs/lm_tiny_aux_m/final" --steps="$kvp_c_steps" --kv_loss_reduce=mean "${common[@]}" \
  --workdir="$runs/kvp_c_m"
for aux in lm_tiny_aux lm_tiny_aux_m; do
  python -m experiments.train_lm --init_from="$runs/$aux/final" --steps="$kvp_c_steps" \
    --lr=1e-3 --warmup_steps=50 "${common[@]}" --workdir="$runs/${aux}_more"
done
python -m experiments.eval_kvpred --base="$runs/lm_tiny/final" \
  --variants=base,aux_only:"$runs/lm_tiny_aux/final",aux_only:"$runs/lm_tiny_aux_m/final",aux_only:"$runs/lm_tiny_aux_more/final",aux_only:"$runs/lm_tiny_aux_m_more/final",lp_baseline:"$runs/lp_tiny/final",lp_baseline:"$runs/lp75_tiny/final",kvp:"$runs/kvp_lp/final",kvp:"$runs/kvp_lp75/final",kvp:"$runs/kvp_c/final",kvp:"$runs/kvp_c_m/final",kvp_identity \
  --task=synthetic_qa --kb_entities="$kb" --out="$runs/eval_qa"
# TTFT at a longer prompt, where prefill compute dominates fixed per-call costs
python -m experiments.eval_kvpred --base="$runs/lm_tiny/final" \
  --variants=base,aux_only:"$runs/lm_tiny_aux/final",aux_only:"$runs/lm_tiny_aux_m/final",lp_baseline:"$runs/lp_tiny/final",lp_baseline:"$runs/lp75_tiny/final",kvp:"$runs/kvp_lp/final",kvp:"$runs/kvp_lp75/final",kvp:"$runs/kvp_c/final",kvp:"$runs/kvp_c_m/final" \
  --task=synthetic_qa --kb_entities="$kb" --limit=20 --ttft_prompt_len=512 --ttft_batch_sizes=1,8 \
  --out="$runs/eval_ttft512"
