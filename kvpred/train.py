"""One training loop for language models and KV predictors.

    Trainer(model, trainable, loss_fn, TrainConfig, workdir, mesh).run(stream) -> history

* Only the parameters selected by `trainable` (an nnx filter) get gradients and optimizer
  state; everything else (KVP's base model) is frozen: passed to the step as a constant.
* `TrainConfig` and its optimiser (AdamW, warm-up then cosine decay, clipping) are in
  `kvpred.train_config`; a workdir's run record and metrics reader in `kvpred.workdir`. Both
  are importable from here.
* Data parallel: the batch is sharded over the mesh's "data" axis, parameters by the logical
  rules in `jaxserve.sharding`; XLA inserts the gradient all-reduce.
* Several processes (`jaxserve.distributed`): the mesh spans every process's devices (by
  default "data" over all of them); each process computes step's global batch and hands JAX
  only the rows its own devices hold (`jax.make_array_from_process_local_data`), so the loss
  curve is the one-process curve of the same global batch. Every process takes part in each
  orbax save and restore (orbax writes each shard once); process 0 alone writes
  metrics.jsonl and moves damaged checkpoints aside.
* `workdir/checkpoints/` holds orbax checkpoints of the trainable parameters, the optimizer
  state and the step. A run restarted with the same workdir resumes from the latest one; since
  a batch is a pure function of its step, it continues on the same loss curve.
* `workdir/metrics.jsonl` gets one JSON line per logged step (loss terms, learning rate,
  gradient norm, tokens/s); lines past the resumed step are dropped on resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxserve import distributed
from jaxserve import sharding as shd
from jaxserve.errors import CheckpointError
from jaxserve.models.checkpoint import first_line, quiet_failed_read_noise
from kvpred.train_config import (  # noqa: F401 (importable from here)
    TrainConfig,
    lr_schedule,
    make_optimizer,
)
from kvpred.workdir import (  # noqa: F401 (importable from here)
    RESUME_MODES,
    RUN_FILE,
    RUN_OUTPUTS,
    claim_workdir,
    has_checkpoint,
    read_metrics,
    read_run,
)

LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict]]


class Trainer:
    def __init__(
        self,
        model: nnx.Module,
        trainable,
        loss_fn: LossFn,
        config: TrainConfig,
        workdir: str,
        mesh: Mesh | None = None,
    ):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        if mesh is None:  # one device, or data parallel over every process's devices
            n = jax.device_count() if distributed.process_count() > 1 else 1
            mesh = shd.make_mesh({"data": n, "model": 1}, jax.devices()[:n])
        distributed.check_mesh(mesh)
        self.mesh = mesh
        self.main = distributed.is_main()
        self.graphdef, params, frozen = nnx.split(model, trainable, ...)
        if not jax.tree.leaves(params):
            raise ValueError("nothing to train: the trainable filter selects no parameters")
        # own buffers: the step donates them, and a parameter copied from a frozen one (an LP
        # auxiliary model's layers) may still share its buffer
        self.params = jax.tree.map(jnp.copy, shd.shard_state(params, self.mesh))
        self.frozen = shd.shard_state(frozen, self.mesh) if jax.tree.leaves(frozen) else frozen
        self.tx = make_optimizer(config)
        # moments sharded like the parameters, the rest (step counts) replicated on the mesh
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.opt_state = jax.tree.map(
            lambda x: (
                x if len(x.sharding.device_set) == self.mesh.size else jax.device_put(x, replicated)
            ),
            jax.jit(self.tx.init)(self.params),
        )
        self.schedule = lr_schedule(config)
        self.step = 0
        self.data_size = self.mesh.shape["data"]
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        graphdef, tx = self.graphdef, self.tx

        def train_step(params, opt_state, frozen, batch):
            def objective(p):
                return loss_fn(nnx.merge(graphdef, p, frozen), batch)

            (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
            return params, opt_state, metrics

        self._step_fn = jax.jit(train_step, donate_argnums=(0, 1))
        self._ckpt = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=config.keep_checkpoints, create=True, enable_async_checkpointing=False
            ),
        )
        self.metrics_path = os.path.join(self.workdir, "metrics.jsonl")

    # -- state ------------------------------------------------------------------------------

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.frozen)

    def _tree(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state}

    def save(self) -> None:
        self._ckpt.save(self.step, args=ocp.args.StandardSave(self._tree()), force=True)
        self._ckpt.wait_until_finished()

    def restore(self) -> bool:
        """Restore the newest readable checkpoint in the workdir; False when there is none.

        A checkpoint that cannot be read (damaged data files) is moved aside to
        `checkpoints_damaged/<step>` with a warning naming its step, and the next newest is
        tried; `CheckpointError` when there are checkpoints but none can be read.
        """
        quiet_failed_read_noise()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._tree())
        steps = sorted(self._ckpt.all_steps(), reverse=True)
        bad: dict[int, str] = {}
        for step in steps:
            try:
                tree = self._ckpt.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # orbax/tensorstore raise many kinds for damaged data
                bad[step] = f"{type(e).__name__}: {first_line(e)}"
                logging.warning(
                    "checkpoint step %d in %s cannot be read (%s); trying an older one",
                    step,
                    self._ckpt.directory,
                    bad[step],
                )
                continue
            for b in bad:  # newer than `step`: the run will write these steps again
                self._set_aside(b)
            self.params, self.opt_state, self.step = tree["params"], tree["opt_state"], step
            self._truncate_metrics(step)
            return True
        if steps:  # none readable: the model differs, or all are damaged; nothing is moved
            newest = steps[0]
            raise CheckpointError(
                f"{self.workdir}/checkpoints: no checkpoint can be read (steps "
                f"{sorted(steps)}; step {newest}: {bad[newest]}); use --overwrite to start over"
            )
        self._truncate_metrics(0)  # lines of a run killed before its first checkpoint
        return False

    def _set_aside(self, step: int) -> None:
        """Move a damaged checkpoint out of the manager's way (a later save reuses its step)."""
        if self.main:
            src = os.path.join(os.fspath(self._ckpt.directory), str(step))
            dst = os.path.join(self.workdir, "checkpoints_damaged", str(step))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            shutil.move(src, dst)
        distributed.barrier(f"set_aside_{step}")
        self._ckpt.reload()

    def _truncate_metrics(self, step: int) -> None:
        """Keep the metric lines up to `step` (a torn last line, cut by a kill, is dropped)."""
        if not self.main or not os.path.exists(self.metrics_path):
            return
        keep = [rec for rec in read_metrics(self.workdir) if rec["step"] <= step]
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in keep)

    # -- loop -------------------------------------------------------------------------------

    def put_batch(self, batch: dict) -> dict:
        rows = next(iter(batch.values())).shape[0]
        if rows % self.data_size:
            raise ValueError(
                f"batch of {rows} rows does not split over the data axis ({self.data_size})"
            )
        if distributed.process_count() == 1:
            return jax.device_put(batch, self._batch_sharding)
        return {k: self._global_rows(np.asarray(v)) for k, v in batch.items()}

    def _global_rows(self, x: np.ndarray) -> jax.Array:
        """The global batch array, given only the rows this process's devices hold."""
        rows = self._batch_sharding.addressable_devices_indices_map(x.shape).values()
        spans = sorted({idx[0].indices(x.shape[0])[:2] for idx in rows})
        lo, hi = spans[0][0], max(stop for _, stop in spans)
        if any(b[0] > a[1] for a, b in zip(spans, spans[1:])):
            raise ValueError(f"this process's batch rows {spans} are not contiguous on the mesh")
        return jax.make_array_from_process_local_data(self._batch_sharding, x[lo:hi], x.shape)

    def run(self, batch_at: Callable[[int], dict], resume: bool = True) -> list[dict]:
        """Train to `config.steps`; `batch_at(step)` gives step's batch (numpy arrays)."""
        c = self.config
        if resume and self.restore():
            logging.info("resumed from step %d of %s", self.step, self.workdir)
        elif not resume:
            self._truncate_metrics(0)
        history: list[dict] = []
        os.makedirs(self.workdir, exist_ok=True)
        t_last, tokens_since = time.perf_counter(), 0
        with open(self.metrics_path, "a") if self.main else contextlib.nullcontext() as log:
            while self.step < c.steps:
                batch = batch_at(self.step)
                tokens_since += int(np.asarray(batch["mask"]).sum())
                self.params, self.opt_state, metrics = self._step_fn(
                    self.params, self.opt_state, self.frozen, self.put_batch(batch)
                )
                self.step += 1
                if self.step % c.log_every == 0 or self.step == c.steps:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if not math.isfinite(metrics["loss"]):
                        raise FloatingPointError(f"loss is {metrics['loss']} at step {self.step}")
                    now = time.perf_counter()
                    rec = {"step": self.step, "lr": float(self.schedule(self.step - 1))}
                    rec.update(metrics)
                    rec["tokens_per_s"] = tokens_since / max(now - t_last, 1e-9)
                    t_last, tokens_since = now, 0
                    if log is not None:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    history.append(rec)
                    logging.info(
                        "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                        self.step,
                        c.steps,
                        rec["loss"],
                        rec["lr"],
                        rec["tokens_per_s"],
                    )
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save()
        return history

    def close(self) -> None:
        self._ckpt.close()


def lm_loss_fn(z_weight: float = 1e-4) -> LossFn:
    from kvpred.losses import lm_loss

    def fn(model, batch):
        b, t = batch["inputs"].shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        return lm_loss(model(batch["inputs"], positions), batch, z_weight)

    return fn


def kvp_loss_fn(weights) -> LossFn:
    from kvpred.losses import kvp_loss

    def fn(model, batch):
        out = model.train_forward(batch["inputs"], batch.get("predicted_until"))
        return kvp_loss(out, batch, weights)

    return fn
