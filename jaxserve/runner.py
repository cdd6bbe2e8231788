"""Jitted prefill and multi-step decode over paged KV, placed on a mesh.

    ModelRunner(model, mesh)
      .prefill(kv, batch)             -> kv, first tokens [B]
      .prefill(kv, batch, base=True)  the base model's exact prefill (a model that predicts
                                      its prompts' cache, `can_predict`, recomputes with it)
      .decode(kv, batch, num_steps)   -> kv, batch (advanced), tokens [B, n], emitted [B, n]

The model is split once (`nnx.split`) and the step functions are plain `jax.jit` over its
state (FACTS: `nnx.jit` costs ~12 ms a call). Parameters and pages are sharded by the logical
rules in `sharding.py`; batch arrays lead with the batch axis and are sharded over "data".
Pages are donated, so XLA updates them in place. `decode` runs `num_steps` tokens in one
`lax.scan` with sampling and stop checks on device, so the host syncs once per chunk.

How decode runs on the backend (the Pallas paged-attention kernel on one GPU / TPU, the CPU's
contiguous decode and [out, in] weight copy) is one `DecodeStrategy` (`jaxserve.strategy`),
chosen when the runner is built; the model's attention is the same paged path either way.

Shapes are the caller's to bucket: every new (batch, length, pages) shape compiles once.
`CompileCounter` counts XLA compilations, to prove that steady-state serving compiles nothing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxserve import sharding as shd
from jaxserve.ahead import AheadOfTime, CompileCounter
from jaxserve.batch import (
    DecodeBatch,
    ExtendBatch,
    PrefillBatch,
    SlotState,
    apply_slot_updates,
    init_slot_state,
    put_rows,
    take_rows,
)
from jaxserve.config import ModelConfig
from jaxserve.decode_loop import decode_chunk
from jaxserve.kvcache.pages import KVPages, init_pages, layer_shapes
from jaxserve.models.transformer import Decoder
from jaxserve.sampling import sample
from jaxserve.strategy import (
    DecodeStrategy,
    out_in_layout,
)


@runtime_checkable
class ServingModel(Protocol):
    """What the runner (and so the engine) needs of a model. `Decoder` satisfies it, and so
    does KV prediction's model, whose prefill predicts the prompt's cache; jaxserve itself
    never imports kvpred (an entry point resolves `--prefill` and hands the model over)."""

    config: ModelConfig

    def prefill_paged(
        self, tokens: jax.Array, lengths: jax.Array, kv: KVPages, block_tables: jax.Array
    ) -> tuple[jax.Array, KVPages]:
        """Write the prompts' KV ([B, T] tokens, [B] lengths) into the pages; logits [B, V] of
        each prompt's last token."""
        ...

    @property
    def decoder(self) -> Decoder:
        """The model that decodes on the cache."""
        ...


class ModelRunner:
    def __init__(
        self,
        model: ServingModel,
        mesh: Mesh | None = None,
        contiguous_decode: bool | None = None,
        out_in_weights: bool | None = None,
        kernel: str | None = None,
        interpret: bool = False,
    ):
        """contiguous_decode, out_in_weights, kernel: the `DecodeStrategy` (None: the default
        for the mesh; see `jaxserve.strategy`). interpret: run a Pallas kernel in the Pallas
        interpreter (tests on the CPU)."""
        CompileCounter.install()
        self.config = model.config
        self.mesh = mesh or shd.make_mesh({"data": 1, "model": 1}, jax.devices()[:1])
        self.graphdef, state = nnx.split(model)
        self.strategy = DecodeStrategy.choose(
            self.mesh, state, kernel, contiguous_decode, out_in_weights, interpret
        )
        self.state_shardings = shd.state_shardings(state, self.mesh)
        self.state = jax.device_put(state, self.state_shardings)
        # Calls pass the state as a flat list of arrays: flattening an NNX State (Variables)
        # on every dispatch costs ~0.5 ms, as much as a decode step of a small model.
        self.leaves, self._treedef = jax.tree.flatten(self.state)
        leaf_shardings = jax.tree.leaves(self.state_shardings)
        self.data_size = self.mesh.shape["data"]
        # while set (`compile_ahead`), the calls below lower their program instead of running
        self.ahead: AheadOfTime | None = None
        self.kv_sharding = shd.kv_sharding(self.mesh, layer_shapes(self.config, 2, 1))
        batch = NamedSharding(self.mesh, PartitionSpec("data" if self.data_size > 1 else None))
        self.batch_sharding = batch
        # the engine reads a prefill's (or continuation's) next tokens [B]: with rows over
        # "data" (whose devices may be other processes') they come back replicated, so every
        # process holds them all
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self.first_sharding = batch if self.data_size == 1 else self._replicated
        # rows over other processes' devices: jit refuses host arrays placed there
        self._rows_across_processes = self.data_size > 1 and self.mesh.is_multi_process
        first = self.first_sharding
        self._prefill = jax.jit(
            self._prefill_fn,
            in_shardings=(leaf_shardings, self.kv_sharding, batch),
            out_shardings=(self.kv_sharding, first),
            donate_argnums=(1,),
        )
        # a model whose prefill is not its decoder's (KV prediction) also keeps the decoder's
        # exact prefill: a dropped request may recover by recomputing its cache
        self.can_predict = model.decoder is not model
        self._prefill_base = self._prefill
        if self.can_predict:
            self._prefill_base = jax.jit(
                functools.partial(self._prefill_fn, base=True),
                in_shardings=(leaf_shardings, self.kv_sharding, batch),
                out_shardings=(self.kv_sharding, first),
                donate_argnums=(1,),
            )
        self._extend = jax.jit(
            self._extend_fn,
            in_shardings=(leaf_shardings, self.kv_sharding, batch),
            out_shardings=(self.kv_sharding, first),
            donate_argnums=(1,),
        )
        self._decode = self._jit_decode(leaf_shardings, out_in=False)
        # the engine's device-resident batch (`SlotState`): replicated, donated every step
        self._apply_updates = jax.jit(
            apply_slot_updates, out_shardings=self._replicated, donate_argnums=(0,)
        )
        self._decode_slots = self._jit_decode_slots(leaf_shardings, out_in=False)
        # batch-1 decode: the same leaves but for the projection weights, stored [out, in]
        if self.strategy.out_in_weights:
            row_state = out_in_layout(self.state)
            self._row_leaves, self._row_treedef = jax.tree.flatten(row_state)
            row_shardings = jax.tree.leaves(shd.state_shardings(row_state, self.mesh))
            self._decode_row = self._jit_decode(row_shardings, out_in=True)
            self._decode_slots_row = self._jit_decode_slots(row_shardings, out_in=True)

    @property
    def contiguous_decode(self) -> bool:
        return self.strategy.contiguous

    @property
    def out_in_weights(self) -> bool:
        return self.strategy.out_in_weights

    def _jit_decode(self, leaf_shardings, out_in: bool):
        return jax.jit(
            functools.partial(self._decode_fn, out_in=out_in),
            static_argnums=(3,),
            in_shardings=(leaf_shardings, self.kv_sharding, self.batch_sharding),
            out_shardings=(self.kv_sharding,) + (self.batch_sharding,) * 3,
            donate_argnums=(1,),
        )

    def _jit_decode_slots(self, leaf_shardings, out_in: bool):
        return jax.jit(
            functools.partial(self._decode_slots_fn, out_in=out_in),
            static_argnums=(4, 5, 6),
            in_shardings=(leaf_shardings, self.kv_sharding, self._replicated, self._replicated),
            out_shardings=(self.kv_sharding, self._replicated, self._replicated),
            donate_argnums=(1, 2),
        )

    # -- public -------------------------------------------------------------------------

    def new_kv(self, num_pages: int, page_size: int) -> KVPages:
        return init_pages(self.config, num_pages, page_size, sharding=self.kv_sharding)

    def put_batch(self, batch):
        """Check and place host arrays on the mesh (batch axis over "data").

        Passing numpy arrays straight to `prefill` / `decode` also works (the jitted call
        places them by its in_shardings) and saves a dispatch per step.
        """
        items = batch.items() if isinstance(batch, dict) else vars(batch).items()
        for name, x in items:
            if x.shape[0] % self.data_size:
                raise ValueError(
                    f"batch array {name!r} has {x.shape[0]} rows, not a multiple of the "
                    f"data axis ({self.data_size})"
                )
        if self._rows_across_processes:
            return self._global_rows(batch)
        return jax.device_put(batch, self.batch_sharding)

    def _global_rows(self, batch):
        """Where rows span processes, host arrays as global arrays of this process's rows
        (every process passes the whole batch); in `compile_ahead`, as shapes. Else `batch`."""
        if not self._rows_across_processes:
            return batch

        def place(x):
            if not isinstance(x, np.ndarray):
                return x
            if self.ahead is not None:
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding)
            return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda i: x[i])

        return jax.tree.map(place, batch)

    def prefill(
        self, kv: KVPages, batch: PrefillBatch | dict, base: bool = False
    ) -> tuple[KVPages, jax.Array]:
        """Writes the prompts' KV; returns the first sampled token of each row [B].
        (A dict with `PrefillBatch`'s fields is accepted too.) `base`: with the decoder's
        exact prefill, not the model's (which differ only when `can_predict`)."""
        if isinstance(batch, dict):
            batch = PrefillBatch(**batch)
        fn = self._prefill_base if base else self._prefill
        batch = self._global_rows(batch)
        if self.ahead is not None:
            return kv, self._lower(fn, (self.leaves, kv, batch), 1, self.first_sharding)
        return fn(self.leaves, kv, batch)

    def extend(self, kv: KVPages, batch: ExtendBatch) -> tuple[KVPages, jax.Array]:
        """Append `batch.tokens` to sequences cached up to `batch.starts` (attending to the
        cache, with the decoder: a predicted-cache prefill never applies here); returns the
        next sampled token of each row [B]."""
        batch = self._global_rows(batch)
        if self.ahead is not None:
            args = (self.leaves, kv, batch)
            return kv, self._lower(self._extend, args, 1, self.first_sharding)
        return self._extend(self.leaves, kv, batch)

    def decode(self, kv: KVPages, batch: DecodeBatch | dict, num_steps: int):
        """`num_steps` tokens for each row in one call; rows stop on a stop id or when
        `remaining` reaches 0. Returns kv, the batch advanced (a `DecodeBatch`), tokens
        [B, n] and emitted [B, n] (False once a row has stopped)."""
        if isinstance(batch, dict):
            batch = DecodeBatch(**batch)
        batch = self._global_rows(batch)
        if self.strategy.out_in_for(batch.tokens.shape[0]):
            fn, leaves = self._decode_row, self._row_leaves
        else:
            fn, leaves = self._decode, self.leaves
        if self.ahead is not None:
            toks = self._lower(fn, (leaves, kv, batch, num_steps), 2)
            return kv, batch, toks, toks
        return fn(leaves, kv, batch, num_steps)

    # -- the engine's device-resident batch -----------------------------------------------

    def new_slots(self, num_slots: int, max_rows: int, max_pages: int, num_stop: int):
        """An empty `SlotState` on the device (see `jaxserve.batch`)."""
        state = init_slot_state(num_slots, max_rows, max_pages, num_stop)
        return jax.device_put(state, self._replicated)

    def update_slots(self, state: SlotState, packed, prefill_tokens) -> SlotState:
        """Apply one step's packed `SlotUpdates` (one host->device transfer)."""
        if self.ahead is not None:
            self._lower(self._apply_updates, (state, packed, prefill_tokens))
            return state
        return self._apply_updates(state, packed, prefill_tokens)

    def decode_slots(
        self,
        kv: KVPages,
        state: SlotState,
        rows: int,
        width: int,
        steps: int,
        max_steps: int | None = None,
    ):
        """Decode the first `rows` entries of `state.rows` for `steps` tokens, block tables
        cut to `width` pages. No host input: tokens come from the state. Returns kv, state,
        tokens [rows, n], emitted [rows, n] (the last two stacked as [2, rows, n] int32, so
        the host reads one array).

        With `max_steps`, every count up to `max_steps` runs one program: a loop whose
        length is an argument, n = `max_steps` (emitted is 0 past `steps`). A single step
        keeps its own program where a chunk would decode on the contiguous copy (one step
        would not pay for it). Without, the program is compiled for exactly `steps`, and
        n = `steps`."""
        if max_steps is None or (steps == 1 and self.single_step_program(rows, max_steps)):
            count, n = None, steps
        elif not 1 <= steps <= max_steps:
            raise ValueError(f"decode of {steps} steps, more than max_steps={max_steps}")
        else:
            count, n = np.int32(steps), max_steps
        if self.strategy.out_in_for(rows):
            fn, leaves = self._decode_slots_row, self._row_leaves
        else:
            fn, leaves = self._decode_slots, self.leaves
        if self.ahead is not None:
            args = (leaves, kv, state, count, rows, width, n)
            return kv, state, self._lower(fn, args, 2, self._replicated)
        return fn(leaves, kv, state, count, rows, width, n)

    def single_step_program(self, rows: int, max_steps: int | None) -> bool:
        """Whether one decode step of `rows` rows runs its own program, not the chunk loop's
        (`decode_slots`): where a chunk decodes on the contiguous copy."""
        return max_steps in (None, 1) or self.strategy.contiguous_for(rows, max_steps)

    # -- compiling ahead ------------------------------------------------------------------

    @contextlib.contextmanager
    def compile_ahead(self, workers: int | None = None) -> Iterator[AheadOfTime]:
        """Within: `prefill`, `extend`, `decode`, `update_slots` and `decode_slots` lower
        their program instead of running it, returning their inputs for what they would
        update and shapes (`jax.ShapeDtypeStruct`s, which later calls inside accept) for new
        outputs. On a clean exit every program is compiled, `workers` at a time
        (`jaxserve.ahead`)."""
        if self.ahead is not None:
            raise RuntimeError("compile_ahead is already active")
        self.ahead = AheadOfTime(workers)
        try:
            yield self.ahead
            self.ahead.compile()
        finally:
            self.ahead.close()
            self.ahead = None

    def _lower(self, fn, args: tuple, output: int | None = None, sharding=None):
        """Add `fn(*args)`'s program to `self.ahead`; with `output`, a placeholder for that
        output of the program, carrying the sharding a real call returns it with."""
        lowered = self.ahead.add(fn, *args)
        if output is None:
            return None
        info = lowered.out_info[output]
        return jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sharding)

    # -- jitted bodies ------------------------------------------------------------------

    def _model(self, leaves, out_in: bool = False) -> ServingModel:
        """The model rebuilt from its leaves (a `ServingModel`)."""
        treedef = self._row_treedef if out_in else self._treedef
        return nnx.merge(self.graphdef, jax.tree.unflatten(treedef, leaves))

    def _prefill_fn(self, state, kv: KVPages, batch: PrefillBatch, base: bool = False):
        model = self._model(state).decoder if base else self._model(state)
        lengths = batch.lengths
        logits, kv = model.prefill_paged(batch.tokens, lengths, kv, batch.block_tables)
        first = sample(logits, batch.keys, lengths, batch.temperature, batch.top_k, batch.top_p)
        return kv, first

    def _extend_fn(self, state, kv: KVPages, batch: ExtendBatch):
        model = self._model(state).decoder
        b, t = batch.tokens.shape
        positions = batch.starts[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
        seq_lens = batch.starts + batch.lengths
        logits, kv = model(
            batch.tokens,
            positions,
            kv=kv,
            block_tables=batch.block_tables,
            seq_lens=seq_lens,
            logits_index=jnp.maximum(batch.lengths - 1, 0),
            attention=self.strategy.attention,
        )
        first = sample(logits, batch.keys, seq_lens, batch.temperature, batch.top_k, batch.top_p)
        return kv, first

    def _decode_slots_fn(
        self, state, kv, slots: SlotState, count, rows: int, width: int, steps: int, out_in: bool
    ):
        batch = take_rows(slots, rows, width)
        if self.data_size > 1 and rows % self.data_size == 0:  # rows over the data axis
            batch = jax.lax.with_sharding_constraint(batch, self.batch_sharding)
        kv, batch, toks, emitted = self._decode_fn(state, kv, batch, steps, out_in, count)
        out = jnp.stack([toks, emitted.astype(toks.dtype)])
        return kv, put_rows(slots, rows, batch), out

    def _decode_fn(
        self, state, kv: KVPages, batch: DecodeBatch, num_steps: int, out_in: bool, steps=None
    ):
        """`num_steps` decode steps, or with `steps` (traced) that many, at most num_steps."""
        model = self._model(state, out_in).decoder
        return decode_chunk(model, self.strategy, kv, batch, num_steps, steps)
