#!/usr/bin/env bash
# KV Prediction on real Hugging Face checkpoints a user has locally (on an accelerator), e.g.
# Qwen2.5-1.5B with Qwen2.5-0.5B as the C auxiliary, or OpenELM-1.1B with OpenELM-450M:
#   1. LP baselines: the base with 1/4, 1/2, 3/4 of its layers kept, fine-tuned as LMs;
#   2. KV predictors: KVP-LP at each fraction, KVP-C with the auxiliary checkpoint;
#   3. the fair auxiliary-only baseline: the auxiliary trained alone as long as KVP-C trains it;
#   4. every variant in one run on HumanEval (greedy pass@1, sampled pass@k) and, given a
#      TriviaQA file, on TriviaQA (1-shot exact match); TTFT FLOPs and measured TTFT each.
#
#   bash scripts/kvpred_hf_recipe.sh BASE_DIR AUX_DIR RUNS_DIR [STEPS] [TRIVIAQA_FILE]
#
# BASE_DIR, AUX_DIR: HF-format directories (config.json, *.safetensors, the tokenizer; both
# models must share the vocabulary; OpenELM ships no tokenizer: copy Llama-2's tokenizer.json
# into its directory). Environment:
#   DATA          training data, sources and row shares (default below; a directory of your
#                 own text, PATH:1, is closer to the paper's pre-training data)
#   LR            learning rate of every run (default 2e-5)
#   LP_FRACTIONS  default "0.25 0.5 0.75"
#   TRAIN_FLAGS   more train_lm / train_kvpred flags (e.g. --batch_size=16 --seq_len=512
#                 --mesh=data:8)
#   EVAL_FLAGS    more eval_kvpred flags (default --samples=10; e.g. --limit=, --mesh=)
# Every run resumes from its workdir when re-run with the same settings.
set -euo pipefail
base=$1
aux=$2
runs=$3
steps=${4:-2000}
triviaqa=${5:-}
data=${DATA:-stdlib_code:0.5,synthetic_code:0.25,synthetic_qa:0.25}
lr=${LR:-2e-5}
warmup=$(( steps / 10 ))
read -r -a extra <<< "${TRAIN_FLAGS:-}"
read -r -a eval_extra <<< "${EVAL_FLAGS:---samples=10}"
train=(--data="$data" --steps="$steps" --lr="$lr" --warmup_steps="$warmup" "${extra[@]}")
variants="base,aux_only:$aux"
for f in ${LP_FRACTIONS:-0.25 0.5 0.75}; do
  python -m experiments.train_lm --lp_from="$base" --lp_fraction="$f" "${train[@]}" \
    --workdir="$runs/lp_$f"
  python -m experiments.train_kvpred --base="$base" --aux=lp:"$f" "${train[@]}" \
    --workdir="$runs/kvp_lp_$f"
  variants+=",lp_baseline:$runs/lp_$f/final,kvp:$runs/kvp_lp_$f/final"
done
python -m experiments.train_kvpred --base="$base" --aux=c:"$aux" --kv_loss_reduce=mean \
  "${train[@]}" --workdir="$runs/kvp_c"
python -m experiments.train_lm --init_from="$aux" "${train[@]}" --workdir="$runs/aux_more"
variants+=",kvp:$runs/kvp_c/final,aux_only:$runs/aux_more/final"
python -m experiments.eval_kvpred --base="$base" --variants="$variants" --task=humaneval \
  "${eval_extra[@]}" --out="$runs/eval_humaneval"
if [ -n "$triviaqa" ]; then
  python -m experiments.eval_kvpred --base="$base" --variants="$variants" \
    --task=triviaqa:"$triviaqa" "${eval_extra[@]}" --out="$runs/eval_triviaqa"
fi
