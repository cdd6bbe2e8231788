"""The engine's batches on the device: prefill arrays, and the resident decode slots.

    DeviceBatch(runner, sched_config, max_stop_ids, max_steps)
      .prefill(kv, reqs, seqs, params, keys[, base])   -> kv, first tokens [B]
      .extend(kv, req, seq, start, ...)        -> kv, first token (a kept turn's continuation)
      .assemble([(out, rows), ...], n)         -> one [B] array of first tokens
      .decode(kv, reqs, steps, ...)            -> kv, [2, b, max_steps] (tokens, emitted)
      .release(request_id)                     the request's slot is free again
      .warmup(kv, host, max_prompt, max_context, extend)

A request takes a slot of the device-resident `SlotState` (`jaxserve.batch`) when it first
decodes and keeps it while its KV is resident. Each decode call first sends what changed
since the last one (rows inserted, pages grown, the set of slots to decode) as one packed
`SlotUpdates` transfer, nothing when nothing changed; a prompt's first token goes from the
last prefill's output into its slot on the device. Shapes are bucketed to powers of two
(batch at least the mesh's data axis), so `warmup` can compile every one a run can hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxserve.ahead import CompileCounter
from jaxserve.batch import ExtendBatch, PrefillBatch, SlotUpdates
from jaxserve.kvcache.host import HostTier
from jaxserve.kvcache.pages import KVPages
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams, sampling_arrays
from jaxserve.sched import Request, SchedulerConfig
from jaxserve.sched.request import pages_for
from jaxserve.utils import pow2, pow2_range


def _place(out: jax.Array, x: jax.Array, offset: jax.Array, k: jax.Array) -> jax.Array:
    """out with x[:k] written at out[offset:offset + k] (one program per pair of shapes)."""
    at = jnp.arange(out.shape[0]) - offset
    take = (at >= 0) & (at < k)
    return jnp.where(take, x[jnp.clip(at, 0, x.shape[0] - 1)].astype(out.dtype), out)


def _widen(x: jax.Array, rows: int) -> jax.Array:
    """x [b] padded with zeros to [rows]."""
    return jnp.zeros(rows, x.dtype).at[: x.shape[0]].set(x)


MIN_DECODE_TOKENS = 128


class DeviceBatch:
    def __init__(
        self,
        runner: ModelRunner,
        sched_config: SchedulerConfig,
        max_stop_ids: int,
        max_steps: int = 1,
    ):
        """max_steps: the most decode steps of one call (every count up to it shares one
        program: `ModelRunner.decode_slots`)."""
        self.runner = runner
        self.max_steps = max_steps
        self.page_size = sched_config.page_size
        # batch buckets: powers of two, at least the data axis (rows are split over it)
        self.min_rows = runner.data_size
        self.max_rows = pow2(sched_config.max_batch, self.min_rows)
        self.max_pages = math.ceil(sched_config.max_seq_len / self.page_size) + 1
        self.num_stop = max_stop_ids
        # decode block tables are at least MIN_DECODE_TOKENS wide: fewer programs to compile
        # (three widths fewer with 16-token pages) for a little masked attention on short rows
        self.min_width = pow2(math.ceil(MIN_DECODE_TOKENS / self.page_size))
        num_slots = sched_config.num_pages - 1  # a resident request holds >= 1 page
        self._slots = runner.new_slots(num_slots, self.max_rows, self.max_pages, self.num_stop)
        self._updates = SlotUpdates(num_slots, self.max_rows, self.max_pages, self.num_stop)
        self._free = list(range(num_slots - 1, -1, -1))  # pop() gives the lowest
        self._slot: dict[str, int] = {}  # request -> its slot
        self._slot_pages: dict[str, tuple[int, ...]] = {}  # pages the slot's record holds
        self._rows: list[int] = []  # slots the device decodes (as last sent)
        # the slot updates read a prefill's tokens from one shape, [max_rows] replicated, so
        # one update program serves every prefill batch size
        self._replicated = NamedSharding(runner.mesh, PartitionSpec())
        self._place = jax.jit(_place, out_shardings=self._replicated)
        self._widen = jax.jit(_widen, static_argnums=1, out_shardings=self._replicated)
        self._no_prefill = jax.device_put(np.zeros(self.max_rows, np.int32), self._replicated)
        # the last dispatch's prefill output, and the row of each request in it
        self._last_prefill: tuple[jax.Array, dict[str, int]] = (self._no_prefill, {})

    def prefill(
        self,
        kv: KVPages,
        reqs: Sequence[Request],
        seqs: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        keys: Sequence[np.ndarray],
        base: bool = False,
    ) -> tuple[KVPages, jax.Array]:
        """Prefill (or recompute) `seqs`, the requests' known tokens, into their pages;
        returns the pages and each row's next token [B]. `base`: the base model's exact
        prefill (`ModelRunner.prefill`)."""
        b = pow2(len(reqs), self.min_rows)
        t = pow2(max(len(s) for s in seqs), 16)
        tokens = np.zeros((b, t), np.int32)
        lengths = np.zeros(b, np.int32)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
            lengths[i] = len(s)
        bt = np.zeros((b, math.ceil(t / self.page_size)), np.int32)
        for i, r in enumerate(reqs):
            pages = r.pages[: bt.shape[1]]
            bt[i, : len(pages)] = pages
        samp = sampling_arrays(list(params), list(keys), b)
        batch = PrefillBatch(tokens=tokens, lengths=lengths, block_tables=bt, **samp)
        return self.runner.prefill(kv, batch, base=base)

    def extend(
        self,
        kv: KVPages,
        req: Request,
        seq: Sequence[int],
        start: int,
        params: SamplingParams,
        key: np.ndarray,
    ) -> tuple[KVPages, jax.Array]:
        """Prefill `seq[start:]` of one request whose first `start` tokens are already in
        its pages; returns the pages and its next token (row 0 of [min_rows])."""
        b = self.min_rows
        new = seq[start:]
        t = pow2(len(new), 16)
        tokens = np.zeros((b, t), np.int32)
        tokens[0, : len(new)] = new
        starts, lengths = np.zeros(b, np.int32), np.zeros(b, np.int32)
        starts[0], lengths[0] = start, len(new)
        width = max(pow2(pages_for(len(seq), self.page_size)), self.min_width)
        bt = np.zeros((b, width), np.int32)
        pages = req.pages[: bt.shape[1]]
        bt[0, : len(pages)] = pages
        samp = sampling_arrays([params], [key], b)
        batch = ExtendBatch(tokens=tokens, starts=starts, lengths=lengths, block_tables=bt, **samp)
        return self.runner.extend(kv, batch)

    def _zeros(self, n: int) -> jax.Array:
        return jax.device_put(np.zeros(n, np.int32), self._replicated)

    def assemble(self, parts: Sequence[tuple[jax.Array, int]], n: int) -> jax.Array:
        """One [pow2(n)] array of next tokens from several calls' outputs: the first `k` rows
        of each (out, k), in order."""
        out = self._zeros(pow2(n, self.min_rows))
        offset = 0
        for x, k in parts:
            args = (out, x, np.int32(offset), np.int32(k))
            if self.runner.ahead is not None:  # warm-up: lower only (`compile_ahead`)
                self.runner.ahead.add(self._place, *args)
            else:
                out = self._place(*args)
            offset += k
        return out

    def dispatched(self, prefill_out: jax.Array | None, reqs: Sequence[Request]) -> None:
        """Record this dispatch's prefill: the next decode's inserts may read its tokens."""
        if prefill_out is None:
            self._last_prefill = (self._no_prefill, {})
        else:
            rows = {r.id: i for i, r in enumerate(reqs)}
            self._last_prefill = (self._widened(prefill_out), rows)

    def _widened(self, prefill_out) -> jax.Array:
        """The prefill's tokens as the slot updates read them ([max_rows], replicated)."""
        if self.runner.ahead is None:
            return self._widen(prefill_out, self.max_rows)
        self.runner.ahead.add(self._widen, prefill_out, self.max_rows)
        return self._no_prefill  # the same shape and sharding

    def decode(
        self,
        kv: KVPages,
        reqs: Sequence[Request],
        steps: int,
        tokens: dict[str, list[int]],
        params: dict[str, SamplingParams],
        keys: dict[str, np.ndarray],
        stop_at: dict[str, int],
    ) -> tuple[KVPages, jax.Array]:
        """Bring the slots up to date (one packed transfer if anything changed), then decode
        `steps` tokens for `reqs`; returns the pages and [2, b, steps] (tokens, emitted).
        tokens: each request's tokens read so far; stop_at: emulated stops (trace replay)."""
        prefill_out, prefill_row = self._last_prefill
        for r in reqs:
            pages = tuple(r.pages)
            slot = self._slot.get(r.id)
            if slot is None:
                slot = self._slot[r.id] = self._free.pop()
                self._slot_pages[r.id] = pages
                seq = tokens[r.id]
                known = len(seq) == r.context_len
                if not known and r.id not in prefill_row:
                    raise AssertionError(f"{r.id}: last token neither read nor in the last prefill")
                p = params[r.id]
                remaining = min(r.max_new_tokens, stop_at.get(r.id, r.max_new_tokens))
                self._updates.insert(
                    slot,
                    pages,
                    r.context_len - 1,
                    remaining - r.num_generated,
                    keys[r.id],
                    p,
                    p.stop_token_ids,
                    token=seq[-1] if known else None,
                    prefill_row=None if known else prefill_row[r.id],
                )
            elif pages != self._slot_pages[r.id]:
                self._slot_pages[r.id] = pages
                self._updates.grow(slot, pages)
        rows = [self._slot[r.id] for r in reqs]
        if len(self._updates) or rows != self._rows:
            packed = self._updates.pack(rows)
            self._slots = self.runner.update_slots(self._slots, packed, prefill_out)
            self._rows = rows
        b = pow2(len(rows), self.min_rows)
        reach = max(r.context_len + steps - 1 for r in reqs)
        width = max(pow2(pages_for(reach, self.page_size)), self.min_width)
        kv, self._slots, out = self.runner.decode_slots(
            kv, self._slots, b, width, steps, self.max_steps
        )
        return kv, out

    @property
    def resident(self) -> dict[str, int]:
        """Request -> slot, for every request holding a slot."""
        return dict(self._slot)

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    def slot_pages(self, request_id: str) -> tuple[int, ...] | None:
        """The pages the request's slot decodes over (None without a slot)."""
        return self._slot_pages.get(request_id)

    def release(self, request_id: str) -> None:
        slot = self._slot.pop(request_id, None)
        if slot is not None:
            self._slot_pages.pop(request_id)
            self._free.append(slot)
            self._free.sort(reverse=True)

    def warmup(
        self,
        kv: KVPages,
        host: HostTier,
        max_prompt: int,
        max_context: int,
        extend: bool = False,
        recover: bool = False,
    ) -> KVPages:
        """Compile every prefill, slot-update, decode and swap bucket a run up to these
        lengths can hit (with `extend`, the continuation of a kept conversation; with
        `recover`, the re-prefill of a dropped request's whole context, up to `max_context`,
        and the base model's exact prefill too when the model predicts its cache), and run
        each once if any was new to the process; returns the pages."""
        ps, runner = self.page_size, self.runner
        batches = [b for b in pow2_range(self.max_rows) if b >= self.min_rows]
        prompt_lens = [16 * b for b in pow2_range(max(1, math.ceil(max_prompt / 16)))]
        longest = max(max_prompt, max_context) if recover else max_prompt
        prefill_lens = [16 * b for b in pow2_range(max(1, math.ceil(longest / 16)))]
        swap_widths = pow2_range(math.ceil(max_context / ps))
        widths = sorted({max(w, self.min_width) for w in swap_widths})
        bases = (False, True) if recover and runner.can_predict else (False,)

        def programs(kv: KVPages, slots):
            """Call every program once: lowered only within `compile_ahead`, else run."""
            ahead = runner.ahead is not None
            for b in batches:
                samp = sampling_arrays([], [], b)
                for t in prefill_lens:
                    bt = np.zeros((b, math.ceil(t / ps)), np.int32)
                    tokens, lengths = np.zeros((b, t), np.int32), np.zeros(b, np.int32)
                    batch = PrefillBatch(tokens=tokens, lengths=lengths, block_tables=bt, **samp)
                    for base in bases:
                        kv, first = runner.prefill(kv, batch, base=base)
                self.dispatched(first, [])  # widening this batch size's tokens
            for u in [0] + pow2_range(self.max_rows):  # the updates of up to max_batch rows
                packed = self._updates.pack([], min_records=u)
                slots = runner.update_slots(slots, packed, self._no_prefill)
            for b in batches:
                for w in widths:
                    own = runner.single_step_program(b, self.max_steps)  # else the loop's
                    for k in sorted({1, self.max_steps}) if own else [self.max_steps]:
                        kv, slots, _ = runner.decode_slots(kv, slots, b, w, k, self.max_steps)
            if extend:
                b = self.min_rows
                samp = sampling_arrays([], [], b)
                zeros = np.zeros(b, np.int32)
                for t in prompt_lens:
                    for w in widths:
                        tokens, bt = np.zeros((b, t), np.int32), np.zeros((b, w), np.int32)
                        batch = ExtendBatch(tokens, zeros, zeros, bt, **samp)
                        kv, first = runner.extend(kv, batch)
            if extend or len(bases) > 1:
                # one iteration's rows from several calls (a continuation's, the model's
                # prefill's, the base's) assembled into one array, then widened
                for n in batches:
                    for b in batches:
                        x = jax.ShapeDtypeStruct((b,), np.int32, sharding=runner.first_sharding)
                        if not ahead:
                            x = jax.device_put(np.zeros(b, np.int32), runner.first_sharding)
                        self.assemble([(x, 1)], n)
                    self.dispatched(self.assemble([(x, 1)], n), [])
            return kv

        # every device program but the swaps' is lowered first, then compiled several at a
        # time; the calls return placeholders (`ModelRunner.compile_ahead`)
        compiled = CompileCounter.count()
        with runner.compile_ahead():
            programs(kv, self._slots)
        if CompileCounter.count() > compiled:
            # then each runs once: a program's first run costs more than its later ones
            # (XLA:CPU: 27-44 ms more for tiny's prefills, `scripts/bench_first_run.py`),
            # paid here instead of by the first request of each shape. When none was new to
            # the process, an earlier warm-up ran them. What they decode is garbage: new slots
            kv = programs(kv, self._slots)
            self._slots = runner.new_slots(
                self._updates.num_slots, self.max_rows, self.max_pages, self.num_stop
            )
        self._last_prefill = (self._no_prefill, {})
        budget, host.budget_bytes = host.budget_bytes, None  # warm-up copies are not kept
        try:
            for w in swap_widths:  # swaps move one request's pages: up to a full block table
                copy = host.swap_out(kv, [0] * w)
                kv = host.swap_in(kv, copy, [0] * w)
                copy.release()
        finally:
            host.budget_bytes = budget
        kv.block_until_ready()
        return kv
