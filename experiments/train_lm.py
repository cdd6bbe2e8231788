"""Train a language model (the embedded base, or a C-type auxiliary model) from scratch.

    python -m experiments.train_lm --model=tiny --steps=1500 --workdir=runs/lm_tiny
    python -m experiments.train_lm --model=tiny-aux --steps=1500 --workdir=runs/lm_tiny_aux
    python -m experiments.train_lm --lp_from=runs/lm_tiny/final --lp_fraction=0.5 \
        --steps=600 --lr=1e-3 --workdir=runs/lp_tiny
    python -m experiments.train_lm --init_from=runs/lm_tiny_aux/final --steps=600 \
        --lr=1e-3 --warmup_steps=50 --workdir=runs/lm_tiny_aux_more

Data (`--data`, sources and their row shares): the synthetic closed-book QA knowledge base,
Python standard-library code and the synthetic code task's train split, e.g.
`--data=synthetic_qa:0.6,synthetic_code:0.35,stdlib_code:0.05` (or text files,
`--data=PATH:WEIGHT`). The model is exported to `--export` (default WORKDIR/final) as a
jaxserve checkpoint, usable as `--checkpoint=` / `--base=` everywhere. Re-running with the same
workdir resumes from its latest checkpoint if the settings that define the run are the same
(WORKDIR/run.json); otherwise it refuses, naming each difference, unless --overwrite (start
over) or --resume=force (continue; recorded in run.json and summary.json).
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import training_flags
from jaxserve import cli, distributed
from jaxserve import config as cfg
from jaxserve.models.checkpoint import load_model
from kvpred import recipes
from kvpred.aux import make_lp
from kvpred.evaluate import qa_accuracy
from kvpred.io import tokenizer_for

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
_T = training_flags.define(
    steps=1500,
    lr=3e-3,
    warmup_steps=100,
    checkpoint_every=250,
    export_help="Final checkpoint directory (default WORKDIR/final).",
)
flags.adopt_module_key_flags(training_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MODEL.value not in cfg.PRESETS:
        raise app.UsageError(
            f"--model: unknown preset {_MODEL.value!r}; one of {sorted(cfg.PRESETS)}"
        )
    mesh = _T.check()
    tokenizer = tokenizer_for(_INIT_FROM.value or _LP_FROM.value)  # an HF model's own
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
    start = (
        {"lp_from": os.path.abspath(_LP_FROM.value), "lp_fraction": _LP_FRACTION.value}
        if _LP_FROM.value is not None
        else {"init_from": os.path.abspath(_INIT_FROM.value)}
        if _INIT_FROM.value is not None
        else {"model": _MODEL.value}
    )
    run = _T.claim_workdir(start)
    kb, batch_at = _T.stream(tokenizer)
    model, history = recipes.train_lm(
        config,
        batch_at,
        _T.train_config(),
        _T.workdir.value,
        mesh,
        _T.seed.value,
        _T.export.value,
        init,
    )
    model = distributed.to_local(model)  # every process evaluates its own full copy
    acc = qa_accuracy(model, tokenizer, kb.qa_examples("eval"), mesh=distributed.local_mesh())
    final = _T.final_metrics(history)
    msg = f"final loss {final.get('loss', float('nan')):.4f}; synthetic QA exact match {acc:.3f}"
    if distributed.is_main():
        logging.info(msg)
        print(msg)
    _T.write_summary(__name__, final, acc, run)


if __name__ == "__main__":
    cli.run(main)
