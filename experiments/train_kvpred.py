"""Train an auxiliary model and KV predictor for a frozen base.

    python -m experiments.train_kvpred --base=runs/lm_tiny/final --aux=lp:0.5 \
        --steps=600 --workdir=runs/kvp_lp
    python -m experiments.train_kvpred --base=runs/lm_tiny/final \
        --aux=c:runs/lm_tiny_aux/final --kv_loss_reduce=mean --steps=600 --workdir=runs/kvp_c

--aux: lp:0.25|lp:0.5|lp:0.75 (the base with layers removed, initialised from it), c:PRESET
(random init) or c:DIR (a checkpoint). --layer_map overrides the default map. The KVP
checkpoint is exported to --export (default WORKDIR/final); metrics go to WORKDIR/metrics.jsonl;
re-running with the same workdir resumes if the settings that define the run are the same
(WORKDIR/run.json), and otherwise refuses unless --overwrite or --resume=force.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import training_flags
from jaxserve import cli, distributed
from jaxserve.errors import InputError
from kvpred import recipes
from kvpred.aux import check_aux_spec, parse_aux_spec
from kvpred.evaluate import qa_accuracy
from kvpred.io import load_base, tokenizer_for
from kvpred.losses import KV_REDUCE, KVPLossWeights

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
    "predictor_init",
    "auto",
    list(recipes.PREDICTOR_INITS),
    "identity: identity where widths match, random elsewhere (the paper's); lstsq: the "
    "least-squares map from the auxiliary cache to the base's; auto: lstsq for C, identity "
    "for LP.",
)
_INIT_BATCHES = flags.DEFINE_integer(
    "init_batches", 8, "Batches for the least-squares predictor init.", lower_bound=1
)
_PREFIX = flags.DEFINE_enum(
    "predicted_prefix",
    "all",
    list(recipes.PREDICTED_PREFIXES),
    "all: the base reads the predicted cache at every training position (the paper's); "
    "random: a predicted prefix of random length per row, then the base's own cache, as when "
    "it generates after a predicted prompt; mixed: half the rows each way.",
)
_T = training_flags.define(
    steps=600,
    lr=1e-3,
    warmup_steps=50,
    checkpoint_every=200,
    export_help="KVP checkpoint directory (default WORKDIR/final).",
)
flags.adopt_module_key_flags(training_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mesh = _T.check()
    try:
        parse_aux_spec(_AUX.value)
        layer_map = None
        if _LAYER_MAP.value is not None:
            try:
                layer_map = [int(x) for x in _LAYER_MAP.value]
            except ValueError:
                raise ValueError(f"--layer_map: {_LAYER_MAP.value} are not integers") from None
        base = load_base(_BASE.value, _T.seed.value)
        check_aux_spec(_AUX.value, base.config, layer_map)  # before any work or record
        weights = KVPLossWeights(_LB.value, _LA.value, _LC.value, _REDUCE.value)
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    base_source = os.path.abspath(_BASE.value) if os.path.isdir(_BASE.value) else _BASE.value
    aux_kind, _, aux_arg = _AUX.value.partition(":")
    aux = f"c:{os.path.abspath(aux_arg)}" if aux_kind == "c" and os.path.isdir(aux_arg) else None
    run = _T.claim_workdir(
        {
            "base": base_source,
            "aux": aux or _AUX.value,
            "layer_map": layer_map,
            "kv_loss_reduce": _REDUCE.value,
            "loss_base": _LB.value,
            "loss_aux": _LA.value,
            "loss_kv": _LC.value,
            "predictor_init": _PRED_INIT.value,
            "init_batches": _INIT_BATCHES.value,
            # recorded only when not the default, so runs made before the flag still resume
            **({"predicted_prefix": _PREFIX.value} if _PREFIX.value != "all" else {}),
        }
    )
    tokenizer = tokenizer_for(_BASE.value)  # an HF base's own, else the embedded one
    kb, batch_at = _T.stream(tokenizer)
    try:
        model, history = recipes.train_kvpred(
            base,
            base_source,
            _AUX.value,
            batch_at,
            _T.train_config(),
            _T.workdir.value,
            weights,
            layer_map,
            mesh,
            _T.seed.value,
            _T.export.value,
            _PRED_INIT.value,
            _INIT_BATCHES.value,
            extra_meta={"run_history": run["history"]},
            predicted_prefix=_PREFIX.value,
        )
    except InputError:
        raise
    except ValueError as e:  # a bad --aux / --layer_map found while building the model
        raise app.UsageError(str(e)) from None
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
