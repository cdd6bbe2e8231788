"""One training loop for language models and KV predictors.

    Trainer(model, trainable, loss_fn, TrainConfig, workdir, mesh).run(stream) -> history

* Only the parameters selected by `trainable` (an nnx filter) get gradients and optimizer
  state; everything else (KVP's base model) is frozen: passed to the step as a constant.
* optax AdamW (b1 0.9, b2 0.95, weight decay 0.1 on matrices only), linear warm-up then cosine
  decay, global-norm clipping.
* Data parallel: the batch is sharded over the mesh's "data" axis, parameters by the logical
  rules in `jaxserve.sharding`; XLA inserts the gradient all-reduce.
* `workdir/checkpoints/` holds orbax checkpoints of the trainable parameters, the optimizer
  state and the step. A run restarted with the same workdir resumes from the latest one; since
  a batch is a pure function of its step, it continues on the same loss curve.
* `workdir/metrics.jsonl` gets one JSON line per logged step (loss terms, learning rate,
  gradient norm, tokens/s); lines past the resumed step are dropped on resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
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

from jaxserve import sharding as shd


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}]")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")


def lr_schedule(c: TrainConfig) -> optax.Schedule:
    warmup = max(c.warmup_steps, 1)  # optax needs >= 1 warm-up and >= 1 decay step
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=c.lr, warmup_steps=warmup,
        decay_steps=max(c.steps, warmup + 1), end_value=c.lr * c.min_lr_ratio,
    )  # fmt: skip


def make_optimizer(c: TrainConfig) -> optax.GradientTransformation:
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(c.clip_norm),
        optax.adamw(lr_schedule(c), c.b1, c.b2, weight_decay=c.weight_decay, mask=decay_mask),
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
        self.mesh = mesh or shd.make_mesh({"data": 1, "model": 1}, jax.devices()[:1])
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
            lambda x: x if len(x.sharding.device_set) == self.mesh.size
            else jax.device_put(x, replicated),
            jax.jit(self.tx.init)(self.params),
        )  # fmt: skip
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
        """Restore the latest checkpoint in the workdir; False when there is none."""
        latest = self._ckpt.latest_step()
        if latest is None:
            return False
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._tree())
        tree = self._ckpt.restore(latest, args=ocp.args.StandardRestore(abstract))
        self.params, self.opt_state, self.step = tree["params"], tree["opt_state"], latest
        self._truncate_metrics(latest)
        return True

    def _truncate_metrics(self, step: int) -> None:
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.metrics_path, "w") as f:
            f.writelines(keep)

    # -- loop -------------------------------------------------------------------------------

    def put_batch(self, batch: dict) -> dict:
        rows = next(iter(batch.values())).shape[0]
        if rows % self.data_size:
            raise ValueError(
                f"batch of {rows} rows does not split over the data axis ({self.data_size})"
            )
        return jax.device_put(batch, self._batch_sharding)

    def run(self, batch_at: Callable[[int], dict], resume: bool = True) -> list[dict]:
        """Train to `config.steps`; `batch_at(step)` gives step's batch (numpy arrays)."""
        c = self.config
        if resume and self.restore():
            logging.info("resumed from step %d of %s", self.step, self.workdir)
        history: list[dict] = []
        os.makedirs(self.workdir, exist_ok=True)
        t_last, tokens_since = time.perf_counter(), 0
        with open(self.metrics_path, "a") as log:
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
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    history.append(rec)
                    logging.info(
                        "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                        self.step, c.steps, rec["loss"], rec["lr"], rec["tokens_per_s"],
                    )  # fmt: skip
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save()
        return history

    def close(self) -> None:
        self._ckpt.close()


def has_checkpoint(workdir: str) -> bool:
    """Whether a `Trainer` on `workdir` would resume (a finished checkpoint step is there)."""
    path = os.path.join(workdir, "checkpoints")
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        return kvp_loss(model.train_forward(batch["inputs"]), batch, weights)

    return fn
