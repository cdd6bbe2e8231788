"""The training recipes behind `experiments.train_lm` and `experiments.train_kvpred`.

    train_lm(config, data, steps, ...)          -> a base (or C auxiliary) language model
    train_kvpred(base, base_source, aux, ...)   -> a KV prediction checkpoint

Data specs name sources and their share of rows: `synthetic_qa:0.8,stdlib_code:0.2` (built in:
the QA knowledge base, standard-library code, and `synthetic_code`, the code task's train split),
or a directory / file of text (`FILE.txt`, `FILE.jsonl` with a "text" field, a directory of
`*.txt` and `*.py`). Both recipes write `workdir/metrics.jsonl` and resume from
`workdir/checkpoints`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable

import numpy as np
from absl import logging
from flax import nnx

from jaxserve.config import ModelConfig
from jaxserve.models.checkpoint import save_checkpoint
from jaxserve.models.transformer import Decoder, init_model
from jaxserve.tokenizer import Tokenizer
from kvpred import data as kd
from kvpred.aux import build_aux
from kvpred.data import code_task
from kvpred.io import save_kvp
from kvpred.losses import KVPLossWeights
from kvpred.model import KVPModel, trainable_filter
from kvpred.predictor import KVPredictor, fit_least_squares
from kvpred.tasks.registry import DEFAULT_KB_ENTITIES  # noqa: F401 (the CLIs read it here)
from kvpred.train import TrainConfig, Trainer, has_checkpoint, kvp_loss_fn, lm_loss_fn

BUILTIN_SOURCES = ("synthetic_qa", "stdlib_code", "synthetic_code")
CODE_TASK_DOCUMENTS = 20_000  # train problems of the synthetic code task a stream draws from
PREDICTOR_INITS = ("auto", "lstsq", "identity")
# How much of each training row the base reads from the predicted cache (`train_kvpred`):
# the share of rows read whole; the others are cut at random.
_WHOLE_ROWS = {"all": 1.0, "random": 0.0, "mixed": 0.5}
PREDICTED_PREFIXES = tuple(_WHOLE_ROWS)
# What the shipped `tiny` and `tiny-aux` were trained on (scripts/kvpred_pipeline.sh).
DEFAULT_DATA = "synthetic_qa:0.9,stdlib_code:0.1"


def parse_data_spec(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, weight = part.rpartition(":")
        if not sep:
            name, weight = part, "1"
        try:
            w = float(weight)
        except ValueError:
            name, w = part, 1.0  # a path with a colon in it
        if w <= 0:
            raise ValueError(f"data source {name!r}: weight must be > 0, got {weight}")
        if name not in BUILTIN_SOURCES and not os.path.exists(name):
            raise ValueError(
                f"data source {name!r} is neither built in ({', '.join(BUILTIN_SOURCES)}) nor "
                "an existing file or directory"
            )
        out[name] = w
    if not out:
        raise ValueError(f"empty data spec {spec!r}")
    return out


def _read_texts(path: str) -> list[str]:
    files = (
        sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
        + sorted(glob.glob(os.path.join(path, "**", "*.py"), recursive=True))
        if os.path.isdir(path)
        else [path]
    )
    texts = []
    for f in files:
        if f.endswith(".jsonl"):
            with open(f) as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        rec = json.loads(line)
                        if "text" not in rec:
                            raise ValueError(f"{f}:{n}: a JSONL record needs a 'text' field")
                        texts.append(rec["text"])
        else:
            with open(f, encoding="utf-8", errors="replace") as fh:
                texts.append(fh.read())
    if not texts:
        raise ValueError(f"data source {path!r} holds no text (*.txt, *.py or *.jsonl)")
    return texts


def make_stream(
    tokenizer: Tokenizer,
    spec: str,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    kb: kd.KnowledgeBase | None = None,
    code_bytes: int = 1_000_000,
) -> Callable[[int], dict]:
    weights = parse_data_spec(spec)
    docs: dict[str, list[str]] = {}
    for name in weights:
        if name == "synthetic_qa":
            docs[name] = kd.qa_documents(kb or kd.KnowledgeBase(), seed=seed)
        elif name == "stdlib_code":
            docs[name] = kd.code_documents(code_bytes, seed=seed)
        elif name == "synthetic_code":
            docs[name] = code_task.train_documents(CODE_TASK_DOCUMENTS, seed=seed)
        else:
            docs[name] = _read_texts(name)
    stream = kd.TokenStream(
        tokenizer, docs, weights, seq_len=seq_len, batch_size=batch_size, seed=seed
    )

    def batch_at(step: int) -> dict:
        b = stream.batch(step)
        return {
            "inputs": b["inputs"],
            "targets": b["targets"],
            "mask": b["mask"],
            "input_mask": (b["segment_ids"] > 0).astype(np.float32),
        }

    return batch_at


def train_lm(
    config: ModelConfig,
    batch_at: Callable[[int], dict],
    train_config: TrainConfig,
    workdir: str,
    mesh=None,
    seed: int = 0,
    export: str | None = None,
    init: Decoder | None = None,
) -> tuple[Decoder, list[dict]]:
    """Train a language model (from scratch, or from `init`, e.g. a layer-pruned base);
    export it as a jaxserve checkpoint."""
    model = init if init is not None else init_model(config, seed)
    trainer = Trainer(model, nnx.Param, lm_loss_fn(), train_config, workdir, mesh)
    try:
        history = trainer.run(batch_at)
        model = trainer.model()
    finally:
        trainer.close()
    save_checkpoint(model, export or os.path.join(workdir, "final"))
    return model, history


def _with_random_cuts(
    batch_at: Callable[[int], dict], seed: int, whole_share: float = 0.0
) -> Callable[[int], dict]:
    """`batch_at` whose batches also hold `predicted_until` [B]: a cut per row in 1..T,
    T (the whole row predicted) for a `whole_share` of the rows."""

    def batch_with_cuts(step: int) -> dict:
        batch = dict(batch_at(step))
        rows, t = batch["inputs"].shape
        rng = np.random.default_rng([seed, step, 0x6B7670])
        cuts = rng.integers(1, t + 1, size=rows)
        whole = rng.random(rows) < whole_share
        batch["predicted_until"] = np.where(whole, t, cuts).astype(np.int32)
        return batch

    return batch_with_cuts


def train_kvpred(
    base: Decoder,
    base_source: str,
    aux_spec: str,
    batch_at: Callable[[int], dict],
    train_config: TrainConfig,
    workdir: str,
    weights: KVPLossWeights | None = None,
    layer_map: list[int] | None = None,
    mesh=None,
    seed: int = 0,
    export: str | None = None,
    predictor_init: str = "auto",
    init_batches: int = 8,
    extra_meta: dict | None = None,
    predicted_prefix: str = "all",
) -> tuple[KVPModel, list[dict]]:
    """Train an auxiliary model and predictor for a frozen base; export a KVP checkpoint.

    predictor_init: "identity" is the paper's: the identity where input and output widths
    match (an LP auxiliary model's kept layers), a random init elsewhere. "lstsq" starts from
    the least-squares map from the auxiliary model's cache to the base's, fitted on
    `init_batches` batches drawn after the training steps' (`predictor.fit_least_squares`).
    "auto": "lstsq" for a C auxiliary model, whose widths differ, "identity" for LP.
    extra_meta: more fields for kvp_config.json (the command line adds the run's history).
    predicted_prefix: "all" is the paper's: the base reads the predicted cache at every
    position of a row. "random": for each row a cut drawn uniformly from 1..T (a pure function
    of the seed and step, so a resumed run sees the same cuts); the base reads the predicted
    cache before it and its own cache from it on, as when it generates after a predicted
    prompt. "mixed": half the rows (drawn at random) as "all", the others as "random".
    """
    if predictor_init not in PREDICTOR_INITS:
        raise ValueError(f"predictor_init must be one of {PREDICTOR_INITS}, not {predictor_init!r}")
    if predicted_prefix not in PREDICTED_PREFIXES:
        raise ValueError(
            f"predicted_prefix must be one of {PREDICTED_PREFIXES}, not {predicted_prefix!r}"
        )
    if _WHOLE_ROWS[predicted_prefix] < 1.0:
        batch_at = _with_random_cuts(batch_at, seed, _WHOLE_ROWS[predicted_prefix])
    weights = weights or KVPLossWeights()
    aux = build_aux(aux_spec, base, layer_map, seed)
    pred = KVPredictor(aux.model.config, base.config, aux.layer_map, rngs=nnx.Rngs(seed))
    model = KVPModel(base, aux.model, pred)
    if predictor_init == "auto":
        predictor_init = "identity" if aux.kind == "lp" else "lstsq"
    if predictor_init == "lstsq" and init_batches > 0 and not has_checkpoint(workdir):
        # (a resumed run restores its trained predictor instead)
        first = train_config.steps  # batches the training steps never see
        fit = fit_least_squares(model, [batch_at(first + i) for i in range(init_batches)])
        logging.info(
            "least-squares predictor init: %s", {k: round(float(v), 4) for k, v in fit.items()}
        )
    trainer = Trainer(model, trainable_filter(), kvp_loss_fn(weights), train_config, workdir, mesh)
    try:
        history = trainer.run(batch_at)
        model = trainer.model()
    finally:
        trainer.close()
    meta = {
        "aux_spec": aux_spec,
        "aux_kind": aux.kind,
        "kept_layers": aux.kept_layers,
        "step": trainer.step,
        "loss_weights": dataclasses.asdict(weights),
        "predictor_init": predictor_init,
        "predicted_prefix": predicted_prefix,
        **(extra_meta or {}),
    }
    save_kvp(model, export or os.path.join(workdir, "final"), base_source=base_source, meta=meta)
    return model, history
