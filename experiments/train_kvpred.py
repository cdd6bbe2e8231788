"""Train an auxiliary model and KV predictor for a frozen base.

    python -m experiments.train_kvpred --base=runs/lm_tiny/final --aux=lp:0.5 \
        --steps=600 --workdir=runs/kvp_lp
    python -m experiments.train_kvpred --base=runs/lm_tiny/final \
        --aux=c:runs/lm_tiny_aux/final --kv_loss_reduce=mean --steps=600 --workdir=runs/kvp_c

--aux: lp:0.25|lp:0.5|lp:0.75 (the base with layers removed, initialised from it), c:PRESET
(random init) or c:DIR (a checkpoint). --layer_map overrides the default map. The KVP
checkpoint is exported to --export (default WORKDIR/final); metrics go to WORKDIR/metrics.jsonl;
re-running with the same workdir resumes.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from jaxserve import experiment, sharding
from jaxserve.tokenizer import load_default
from kvpred import data as kd
from kvpred import recipes
from kvpred.aux import parse_aux_spec
from kvpred.evaluate import qa_accuracy
from kvpred.io import load_base
from kvpred.losses import KV_REDUCE, KVPLossWeights
from kvpred.train import TrainConfig

_BASE = flags.DEFINE_string(
    "base", None, "Frozen base: checkpoint directory or preset.", required=True
)
_AUX = flags.DEFINE_string("aux", "lp:0.5", "lp:FRACTION | c:PRESET | c:DIR")
_LAYER_MAP = flags.DEFINE_list("layer_map", None, "Explicit map: aux layer for each base layer.")
_REDUCE = flags.DEFINE_enum("kv_loss_reduce", "sum", list(KV_REDUCE), "Reduce KV L1 over layers.")
_LB = flags.DEFINE_float("loss_base", 1.0, "Weight of the base's CE on the predicted cache.")
_LA = flags.DEFINE_float("loss_aux", 1.0, "Weight of the auxiliary model's own CE.")
_LC = flags.DEFINE_float("loss_kv", 1.0, "Weight of the KV L1 term.")
_PRED_INIT = flags.DEFINE_enum(
    "predictor_init", "auto", list(recipes.PREDICTOR_INITS),
    "identity: identity where widths match, random elsewhere (the paper's); lstsq: the "
    "least-squares map from the auxiliary cache to the base's; auto: lstsq for C, identity "
    "for LP.",
)  # fmt: skip
_INIT_BATCHES = flags.DEFINE_integer(
    "init_batches", 8, "Batches for the least-squares predictor init.", lower_bound=1
)
_DATA = flags.DEFINE_string("data", recipes.DEFAULT_DATA, "Sources and row shares.")
_STEPS = flags.DEFINE_integer("steps", 600, "Optimizer steps.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sequences per step.", lower_bound=1)
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.", lower_bound=8)
_LR = flags.DEFINE_float("lr", 1e-3, "Peak learning rate (> 0).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 50, "Linear warm-up steps.", lower_bound=0)
_KB_ENTITIES = flags.DEFINE_integer(
    "kb_entities", recipes.DEFAULT_KB_ENTITIES, "Knowledge-base entities.", lower_bound=4
)
_KB_SEED = flags.DEFINE_integer("kb_seed", 0, "Knowledge-base seed.")
_SEED = flags.DEFINE_integer("seed", 0, "Init and data seed.")
_MESH = flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2 (default: 1 device).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and metrics go here.", required=True)
_EXPORT = flags.DEFINE_string("export", None, "KVP checkpoint directory (default WORKDIR/final).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Log metrics every N steps.", lower_bound=1)
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 200, "Checkpoint every N.", lower_bound=1)

flags.register_validator("lr", lambda v: v > 0, message="--lr must be > 0")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WARMUP.value > _STEPS.value:
        raise app.UsageError("--warmup_steps must not exceed --steps")
    try:
        parse_aux_spec(_AUX.value)
        layer_map = None
        if _LAYER_MAP.value is not None:
            try:
                layer_map = [int(x) for x in _LAYER_MAP.value]
            except ValueError:
                raise ValueError(f"--layer_map: {_LAYER_MAP.value} are not integers") from None
        recipes.parse_data_spec(_DATA.value)
        mesh = sharding.make_mesh(_MESH.value) if _MESH.value else None
        base = load_base(_BASE.value, _SEED.value)
        weights = KVPLossWeights(_LB.value, _LA.value, _LC.value, _REDUCE.value)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    base_source = os.path.abspath(_BASE.value) if os.path.isdir(_BASE.value) else _BASE.value
    tokenizer = load_default()
    kb = kd.KnowledgeBase(_KB_ENTITIES.value, _KB_SEED.value)
    batch_at = recipes.make_stream(
        tokenizer, _DATA.value, _SEQ.value, _BATCH.value, _SEED.value, kb
    )
    tc = TrainConfig(
        steps=_STEPS.value, lr=_LR.value, warmup_steps=_WARMUP.value,
        log_every=_LOG_EVERY.value, checkpoint_every=_CKPT_EVERY.value,
    )  # fmt: skip
    try:
        model, history = recipes.train_kvpred(
            base, base_source, _AUX.value, batch_at, tc, _WORKDIR.value, weights, layer_map,
            mesh, _SEED.value, _EXPORT.value, _PRED_INIT.value, _INIT_BATCHES.value,
        )  # fmt: skip
    except ValueError as e:  # a bad --aux / --layer_map found while building the model
        raise app.UsageError(str(e)) from None
    acc = qa_accuracy(model, tokenizer, kb.qa_examples("eval"))
    final = history[-1] if history else {}
    msg = f"final loss {final.get('loss', float('nan')):.4f}; synthetic QA exact match {acc:.3f}"
    logging.info(msg)
    print(msg)
    experiment.write_json(
        os.path.join(_WORKDIR.value, "summary.json"),
        {"flags": {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__name__)},
         "environment": experiment.environment(), "final": final, "qa_exact_match": acc},
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
