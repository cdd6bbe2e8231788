"""The flags `train_lm` and `train_kvpred` share: data, optimisation, checkpoints, mesh.

Each command line defines them once at import (`define(...)`, with its own defaults), adopts
them as its key flags, and reads them through the returned holder, which also checks them,
builds the data stream and writes summary.json (listing the command's own flags and these).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from absl import app, flags

from jaxserve import experiment, sharding
from kvpred import data as kd
from kvpred import recipes
from kvpred.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class TrainingFlags:
    data: flags.FlagHolder
    steps: flags.FlagHolder
    batch_size: flags.FlagHolder
    seq_len: flags.FlagHolder
    lr: flags.FlagHolder
    warmup_steps: flags.FlagHolder
    kb_entities: flags.FlagHolder
    kb_seed: flags.FlagHolder
    seed: flags.FlagHolder
    mesh: flags.FlagHolder
    workdir: flags.FlagHolder
    export: flags.FlagHolder
    log_every: flags.FlagHolder
    checkpoint_every: flags.FlagHolder

    def check(self):
        """Usage errors for the shared flags; the mesh they ask for (None: one device)."""
        if self.warmup_steps.value > self.steps.value:
            raise app.UsageError("--warmup_steps must not exceed --steps")
        try:
            recipes.parse_data_spec(self.data.value)
            return sharding.make_mesh(self.mesh.value) if self.mesh.value else None
        except ValueError as e:
            raise app.UsageError(str(e)) from None

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps.value, lr=self.lr.value, warmup_steps=self.warmup_steps.value,
            log_every=self.log_every.value, checkpoint_every=self.checkpoint_every.value,
        )  # fmt: skip

    def stream(self, tokenizer) -> tuple[kd.KnowledgeBase, Callable[[int], dict]]:
        """The knowledge base and the batch of each step."""
        kb = kd.KnowledgeBase(self.kb_entities.value, self.kb_seed.value)
        batch_at = recipes.make_stream(
            tokenizer, self.data.value, self.seq_len.value, self.batch_size.value,
            self.seed.value, kb,
        )  # fmt: skip
        return kb, batch_at

    def write_summary(self, module: str, final: dict, qa_exact_match: float) -> None:
        """WORKDIR/summary.json: every flag of `module` (shared ones included), the
        environment, the last logged metrics and the final exact match."""
        experiment.write_json(
            os.path.join(self.workdir.value, "summary.json"),
            {"flags": {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(module)},
             "environment": experiment.environment(), "final": final,
             "qa_exact_match": qa_exact_match},
        )  # fmt: skip


def define(
    *, steps: int, lr: float, warmup_steps: int, checkpoint_every: int, export_help: str
) -> TrainingFlags:
    """Define the shared flags with a command's defaults (call once, at import)."""
    holder = TrainingFlags(
        data=flags.DEFINE_string("data", recipes.DEFAULT_DATA, "Sources and row shares."),
        steps=flags.DEFINE_integer("steps", steps, "Optimizer steps.", lower_bound=1),
        batch_size=flags.DEFINE_integer("batch_size", 32, "Sequences per step.", lower_bound=1),
        seq_len=flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.", lower_bound=8),
        lr=flags.DEFINE_float("lr", lr, "Peak learning rate (> 0)."),
        warmup_steps=flags.DEFINE_integer(
            "warmup_steps", warmup_steps, "Linear warm-up steps.", lower_bound=0
        ),
        kb_entities=flags.DEFINE_integer(
            "kb_entities", recipes.DEFAULT_KB_ENTITIES, "Knowledge-base entities.", lower_bound=4
        ),
        kb_seed=flags.DEFINE_integer("kb_seed", 0, "Knowledge-base seed."),
        seed=flags.DEFINE_integer("seed", 0, "Weight init and data seed."),
        mesh=flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2 (default: 1 device)."),
        workdir=flags.DEFINE_string(
            "workdir", None, "Checkpoints and metrics go here.", required=True
        ),
        export=flags.DEFINE_string("export", None, export_help),
        log_every=flags.DEFINE_integer(
            "log_every", 50, "Log metrics every N steps.", lower_bound=1
        ),
        checkpoint_every=flags.DEFINE_integer(
            "checkpoint_every", checkpoint_every, "Checkpoint every N steps.", lower_bound=1
        ),
    )
    flags.register_validator("lr", lambda v: v > 0, message="--lr must be > 0")
    return holder
