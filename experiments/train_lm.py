"""Train a language model (the embedded base, or a C-type auxiliary model) from scratch.

    python -m experiments.train_lm --model=tiny --steps=1500 --workdir=runs/lm_tiny
    python -m experiments.train_lm --model=tiny-aux --steps=1500 --workdir=runs/lm_tiny_aux
    python -m experiments.train_lm --lp_from=runs/lm_tiny/final --lp_fraction=0.5 \
        --steps=600 --lr=1e-3 --workdir=runs/lp_tiny
    python -m experiments.train_lm --init_from=runs/lm_tiny_aux/final --steps=600 \
        --lr=1e-3 --warmup_steps=50 --workdir=runs/lm_tiny_aux_more

Data: the synthetic closed-book QA knowledge base and Python standard-library code (or text
files, `--data=PATH:WEIGHT`). The model is exported to `--export` (default WORKDIR/final) as a
jaxserve checkpoint, usable as `--checkpoint=` / `--base=` everywhere. Re-running with the same
workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from jaxserve import config as cfg
from jaxserve import experiment, sharding
from jaxserve.models.checkpoint import load_model
from jaxserve.tokenizer import load_default
from kvpred import data as kd
from kvpred import recipes
from kvpred.aux import make_lp
from kvpred.evaluate import qa_accuracy
from kvpred.train import TrainConfig

_MODEL = flags.DEFINE_string("model", "tiny", "Preset to train from scratch.")
_LP_FROM = flags.DEFINE_string(
    "lp_from",
    None,
    "Start from this checkpoint with layers removed (the LP baseline of KV "
    "prediction: a pruned base fine-tuned as a language model); --model is then ignored.",
)
_INIT_FROM = flags.DEFINE_string(
    "init_from",
    None,
    "Start from this checkpoint's weights and continue training it as a language model "
    "(e.g. the control for a C-type KV predictor: its auxiliary model trained as long, "
    "without the base); --model is then ignored.",
)
_LP_FRACTION = flags.DEFINE_enum("lp_fraction", "0.5", ["0.25", "0.5", "0.75"], "Layers kept.")
_DATA = flags.DEFINE_string("data", recipes.DEFAULT_DATA, "Sources and row shares.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Optimizer steps.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sequences per step.", lower_bound=1)
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.", lower_bound=8)
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate (> 0).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 100, "Linear warm-up steps.", lower_bound=0)
_KB_ENTITIES = flags.DEFINE_integer(
    "kb_entities", recipes.DEFAULT_KB_ENTITIES, "Knowledge-base entities.", lower_bound=4
)
_KB_SEED = flags.DEFINE_integer("kb_seed", 0, "Knowledge-base seed.")
_SEED = flags.DEFINE_integer("seed", 0, "Weight and data seed.")
_MESH = flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2 (default: 1 device).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and metrics go here.", required=True)
_EXPORT = flags.DEFINE_string("export", None, "Final checkpoint directory (default WORKDIR/final).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Log metrics every N steps.", lower_bound=1)
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 250, "Checkpoint every N.", lower_bound=1)

flags.register_validator("lr", lambda v: v > 0, message="--lr must be > 0")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MODEL.value not in cfg.PRESETS:
        raise app.UsageError(
            f"--model: unknown preset {_MODEL.value!r}; one of {sorted(cfg.PRESETS)}"
        )
    if _WARMUP.value > _STEPS.value:
        raise app.UsageError("--warmup_steps must not exceed --steps")
    try:
        recipes.parse_data_spec(_DATA.value)
        mesh = sharding.make_mesh(_MESH.value) if _MESH.value else None
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    tokenizer = load_default()
    config, init = cfg.PRESETS[_MODEL.value], None
    if _LP_FROM.value is not None and _INIT_FROM.value is not None:
        raise app.UsageError("--lp_from and --init_from are exclusive: give one")
    if _INIT_FROM.value is not None:
        if not os.path.isdir(_INIT_FROM.value):
            raise app.UsageError(f"--init_from: directory {_INIT_FROM.value!r} does not exist")
        try:
            init = load_model(_INIT_FROM.value)
        except (OSError, ValueError) as e:
            raise app.UsageError(f"--init_from: {e}") from None
        config = init.config
    if _LP_FROM.value is not None:
        if not os.path.isdir(_LP_FROM.value):
            raise app.UsageError(f"--lp_from: directory {_LP_FROM.value!r} does not exist")
        init, _ = make_lp(load_model(_LP_FROM.value), float(_LP_FRACTION.value))
        config = init.config
    kb = kd.KnowledgeBase(_KB_ENTITIES.value, _KB_SEED.value)
    batch_at = recipes.make_stream(
        tokenizer, _DATA.value, _SEQ.value, _BATCH.value, _SEED.value, kb
    )
    tc = TrainConfig(
        steps=_STEPS.value, lr=_LR.value, warmup_steps=_WARMUP.value,
        log_every=_LOG_EVERY.value, checkpoint_every=_CKPT_EVERY.value,
    )  # fmt: skip
    model, history = recipes.train_lm(
        config, batch_at, tc, _WORKDIR.value, mesh, _SEED.value, _EXPORT.value, init
    )
    acc = qa_accuracy(model, tokenizer, kb.qa_examples("eval"))
    logging.info("final loss %.4f; synthetic QA exact match %.3f", history[-1]["loss"], acc)
    print(f"final loss {history[-1]['loss']:.4f}; synthetic QA exact match {acc:.3f}")
    experiment.write_json(
        f"{_WORKDIR.value}/summary.json",
        {"flags": {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__name__)},
         "environment": experiment.environment(), "final": history[-1], "qa_exact_match": acc},
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
