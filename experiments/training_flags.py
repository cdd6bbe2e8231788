"""The flags `train_lm` and `train_kvpred` share: data, optimisation, checkpoints, mesh.

Each command line defines them once at import (`define(...)`, with its own defaults), adopts
them as its key flags, and reads them through the returned holder, which also checks them,
builds the data stream and writes summary.json (listing the command's own flags and these).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

from absl import app, flags

from jaxserve import distributed, experiment, sharding
from kvpred import data as kd
from kvpred import recipes, train
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
    overwrite: flags.FlagHolder
    resume: flags.FlagHolder

    def check(self):
        """Usage errors for the shared flags; the mesh they ask for (None: one device)."""
        if self.warmup_steps.value > self.steps.value:
            raise app.UsageError("--warmup_steps must not exceed --steps")
        experiment.check_output_dir(self.workdir.value, "--workdir")
        if self.export.value:
            experiment.check_output_dir(self.export.value, "--export")
        try:
            recipes.parse_data_spec(self.data.value)
            mesh = sharding.make_mesh(self.mesh.value) if self.mesh.value else None
            if mesh is not None:
                distributed.check_mesh(mesh)
            return mesh
        except ValueError as e:
            raise app.UsageError(str(e)) from None

    # the shared flags that define a run (the rest say where output goes and how often)
    DEFINING = (
        "data",
        "steps",
        "batch_size",
        "seq_len",
        "lr",
        "warmup_steps",
        "kb_entities",
        "kb_seed",
        "seed",
        "mesh",
    )

    def claim_workdir(self, own: dict) -> dict:
        """Refuse (RunSettingsError) a workdir made with other settings unless --overwrite or
        --resume=force; record this run in WORKDIR/run.json. `own`: the command's defining
        settings (model or base, auxiliary model, loss weights, ...)."""
        settings = {name: getattr(self, name).value for name in self.DEFINING}
        settings.update(own)
        claim = functools.partial(
            train.claim_workdir,
            self.workdir.value,
            settings,
            resume=self.resume.value,
            overwrite=self.overwrite.value,
            outputs=() if self.export.value else ("final",),
        )
        if distributed.process_count() == 1:
            return claim()
        # several processes: all check (the same error everywhere), then process 0 writes
        run = claim(write=False)
        distributed.barrier("claim_workdir_checked")
        if distributed.is_main():
            run = claim()
        distributed.barrier("claim_workdir_written")
        return run

    def final_metrics(self, history: list[dict]) -> dict:
        """The last logged metrics: of this process, else (nothing left to train) the log's."""
        if history:
            return history[-1]
        if os.path.exists(os.path.join(self.workdir.value, "metrics.jsonl")):
            logged = train.read_metrics(self.workdir.value)
            return logged[-1] if logged else {}
        return {}

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps.value,
            lr=self.lr.value,
            warmup_steps=self.warmup_steps.value,
            log_every=self.log_every.value,
            checkpoint_every=self.checkpoint_every.value,
        )

    def stream(self, tokenizer) -> tuple[kd.KnowledgeBase, Callable[[int], dict]]:
        """The knowledge base and the batch of each step."""
        kb = kd.KnowledgeBase(self.kb_entities.value, self.kb_seed.value)
        batch_at = recipes.make_stream(
            tokenizer,
            self.data.value,
            self.seq_len.value,
            self.batch_size.value,
            self.seed.value,
            kb,
        )
        return kb, batch_at

    def write_summary(self, module: str, final: dict, qa_exact_match: float, run: dict) -> None:
        """WORKDIR/summary.json: every flag of `module` (shared ones included), the
        environment, the last logged metrics, the final exact match and the run's history
        (`claim_workdir`: starts, resumes, forced resumes with what changed). Process 0 only."""
        if not distributed.is_main():
            return
        experiment.write_json(
            os.path.join(self.workdir.value, "summary.json"),
            {
                "flags": {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(module)},
                "environment": experiment.environment(),
                "final": final,
                "qa_exact_match": qa_exact_match,
                "run_history": run["history"],
            },
        )


def define(
    *, steps: int, lr: float, warmup_steps: int, checkpoint_every: int, export_help: str
) -> TrainingFlags:
    """Define the shared flags with a command's defaults (call once, at import)."""
    holder = TrainingFlags(
        data=flags.DEFINE_string(
            "data",
            recipes.DEFAULT_DATA,
            "Sources and row shares, SOURCE:SHARE,...; built in: "
            + ", ".join(recipes.BUILTIN_SOURCES),
        ),
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
        overwrite=flags.DEFINE_bool(
            "overwrite", False, "Start over: remove what an earlier run left in --workdir."
        ),
        resume=flags.DEFINE_enum(
            "resume",
            "auto",
            list(train.RESUME_MODES),
            "auto: resume a workdir only if it was made with the same settings (else refuse); "
            "force: resume even with other settings (recorded in WORKDIR/run.json).",
        ),
    )
    flags.register_validator("lr", lambda v: v > 0, message="--lr must be > 0")
    return holder
