"""The typed contract between the engine (or any caller) and the model runner.

    PrefillBatch ........ prompts to prefill: tokens [B, T], lengths, block tables, sampling
    DecodeBatch ......... rows to decode from: last token, its position, block tables, stop
                          rules and sampling (the `lax.scan` carry of a decode chunk)
    SlotState ........... the engine's decode batch kept on the device between steps: one
                          DecodeBatch-like record per slot, plus `rows`, the slots the next
                          step decodes (in batch order)
    SlotUpdates ......... what changed since the last step, packed by the host into ONE int32
                          array [U + 1, R] (one transfer): U slot records, then `rows`

Every class is a pytree (`jax.tree_util.register_dataclass`), so a batch goes through
`jax.jit`, `jax.device_put` and shardings as one object. Sampling fields (`keys`,
`temperature`, `top_k`, `top_p`) are per row: see `sampling.py`.

A slot record (one row of the packed array) is

    [kind, slot, src, token, position, remaining, top_k, key0, key1, temperature_bits,
     top_p_bits, stop_ids[num_stop], block_table[max_pages]]

kind: PAD (ignored), INSERT (every field; the token is `token`, or row `src` of the last
prefill's sampled tokens when `src` >= 0, so a prompt's first token never visits the host),
PAGES (the block-table row only: a request grew by a page). Floats travel as their int32 bit
patterns. The last row holds `rows` in its first `max_rows` entries; an unused row entry
points at the spare slot (index `num_slots`), which is never active and whose block table is
all null pages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD, INSERT, PAGES = 0, 1, 2
_HEAD = 11  # fields before stop_ids


def _pytree(cls):
    return jax.tree_util.register_dataclass(dataclasses.dataclass(cls))


@_pytree
class PrefillBatch:
    tokens: jax.Array  # [B, T] int32, prompt (+ generated when recomputing), 0-padded
    lengths: jax.Array  # [B] int32, real tokens per row (0: padding row)
    block_tables: jax.Array  # [B, P] int32, pages of each row (null page 0 past its end)
    keys: jax.Array  # [B, 2] uint32, per-request RNG key
    temperature: jax.Array  # [B] float32 (0: greedy)
    top_k: jax.Array  # [B] int32 (0: off)
    top_p: jax.Array  # [B] float32 (1: off)


@_pytree
class ExtendBatch:
    """New tokens appended to sequences whose earlier tokens are already in the pages (the
    next turn of a conversation whose KV came back from the host)."""

    tokens: jax.Array  # [B, T] int32, the new tokens, 0-padded
    starts: jax.Array  # [B] int32, tokens already cached (the first new token's position)
    lengths: jax.Array  # [B] int32, new tokens per row
    block_tables: jax.Array  # [B, P] int32, every page of the row, cached and new
    keys: jax.Array  # [B, 2] uint32
    temperature: jax.Array  # [B] float32
    top_k: jax.Array  # [B] int32
    top_p: jax.Array  # [B] float32


@_pytree
class DecodeBatch:
    tokens: jax.Array  # [B] int32, each row's last token (the next step's input)
    positions: jax.Array  # [B] int32, that token's position
    block_tables: jax.Array  # [B, P] int32
    active: jax.Array  # [B] bool, the row still emits (cleared by a stop id or budget 0)
    remaining: jax.Array  # [B] int32, tokens the row may still emit
    stop_ids: jax.Array  # [B, S] int32, -1 padded
    keys: jax.Array  # [B, 2] uint32
    temperature: jax.Array  # [B] float32
    top_k: jax.Array  # [B] int32
    top_p: jax.Array  # [B] float32

    def replace(self, **kw) -> DecodeBatch:
        return dataclasses.replace(self, **kw)


@_pytree
class SlotState:
    slots: DecodeBatch  # [num_slots + 1, ...]: one record per slot; the last is the spare
    rows: jax.Array  # [max_rows] int32, the slots the next step decodes, in batch order


def init_slot_state(num_slots: int, max_rows: int, max_pages: int, num_stop: int) -> SlotState:
    """Host arrays of an empty slot state (place them with the runner's sharding)."""
    n = num_slots + 1
    slots = DecodeBatch(
        tokens=np.zeros(n, np.int32),
        positions=np.zeros(n, np.int32),
        block_tables=np.zeros((n, max_pages), np.int32),
        active=np.zeros(n, bool),
        remaining=np.zeros(n, np.int32),
        stop_ids=np.full((n, num_stop), -1, np.int32),
        keys=np.zeros((n, 2), np.uint32),
        temperature=np.zeros(n, np.float32),
        top_k=np.zeros(n, np.int32),
        top_p=np.ones(n, np.float32),
    )
    return SlotState(slots, np.full(max_rows, num_slots, np.int32))


class SlotUpdates:
    """Host-side builder of one step's packed update (see the module docstring)."""

    def __init__(self, num_slots: int, max_rows: int, max_pages: int, num_stop: int):
        self.num_slots, self.max_rows = num_slots, max_rows
        self.max_pages, self.num_stop = max_pages, num_stop
        self.width = max(_HEAD + num_stop + max_pages, max_rows)
        self._records: dict[int, np.ndarray] = {}  # slot -> its record

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, kind: int, slot: int, pages: Sequence[int]) -> np.ndarray:
        if len(pages) > self.max_pages:
            raise ValueError(f"{len(pages)} pages > the slot's block table of {self.max_pages}")
        rec = self._records.get(slot)
        if rec is None or kind == INSERT:
            rec = self._records[slot] = np.zeros(self.width, np.int32)
            rec[0], rec[1], rec[2] = kind, slot, -1
        start = _HEAD + self.num_stop
        rec[start:] = 0
        rec[start : start + len(pages)] = pages
        return rec

    def insert(
        self,
        slot: int,
        pages: Sequence[int],
        position: int,
        remaining: int,
        key: np.ndarray,
        params,
        stop_ids: Sequence[int],
        token: int | None = None,
        prefill_row: int | None = None,
    ) -> None:
        """A request takes `slot`: its last token is `token`, or row `prefill_row` of the
        last prefill's output (not yet read by the host)."""
        if (token is None) == (prefill_row is None):
            raise ValueError("give exactly one of token and prefill_row")
        rec = self._record(INSERT, slot, pages)
        rec[2] = -1 if prefill_row is None else prefill_row
        rec[3] = 0 if token is None else token
        rec[4], rec[5], rec[6] = position, remaining, params.top_k
        rec[7:9] = np.asarray(key, np.uint32).view(np.int32)
        rec[9] = np.float32(params.temperature).view(np.int32)
        rec[10] = np.float32(params.top_p).view(np.int32)
        stops = list(stop_ids)[: self.num_stop]
        rec[_HEAD : _HEAD + self.num_stop] = stops + [-1] * (self.num_stop - len(stops))

    def grow(self, slot: int, pages: Sequence[int]) -> None:
        """A resident slot's block table changed (a new page). After an `insert` of the same
        slot in this step it only replaces that record's block table."""
        self._record(PAGES, slot, pages)

    def pack(self, rows: Sequence[int], min_records: int = 0) -> np.ndarray:
        """The update for a step that decodes `rows` (slot ids, batch order): [U + 1, R],
        U the record count (at least `min_records`) rounded up to a power of two (padding
        records are PAD)."""
        n = len(self._records)
        m = max(n, min_records)
        u = 1 << max(0, (m - 1).bit_length()) if m else 0
        out = np.zeros((u + 1, self.width), np.int32)
        if n:
            out[:n] = np.stack(list(self._records.values()))
        out[:u, 1] = np.where(out[:u, 0] == PAD, self.num_slots, out[:u, 1])
        out[u, : self.max_rows] = self.num_slots
        out[u, : len(rows)] = rows
        self._records = {}
        return out


def apply_slot_updates(state: SlotState, packed: jax.Array, prefill_tokens: jax.Array):
    """Device side of `SlotUpdates.pack`: write the records into the slots, set `rows`.

    packed: [U + 1, R] int32; prefill_tokens: [Bp] int32, the last prefill's sampled tokens.
    A real slot appears in at most one record (`SlotUpdates` merges them)."""
    s = state.slots
    num_stop = s.stop_ids.shape[1]
    max_pages = s.block_tables.shape[1]
    max_rows = state.rows.shape[0]
    # [U] fields of every record
    recs = packed[:-1]
    kind, slot, src = recs[:, 0], recs[:, 1], recs[:, 2]
    token = jnp.where(src >= 0, prefill_tokens[jnp.clip(src, 0)], recs[:, 3])
    insert = kind == INSERT
    bt = recs[:, _HEAD + num_stop : _HEAD + num_stop + max_pages]

    def upd(field, new, mask):
        # the slots named by the records take `new` where `mask`; a real slot appears in at
        # most one record, padding records all name the spare slot and rewrite its own values
        old = field[slot]
        return field.at[slot].set(jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old))

    def bits(x, dtype):
        return jax.lax.bitcast_convert_type(x, dtype)

    slots = DecodeBatch(
        tokens=upd(s.tokens, token, insert),
        positions=upd(s.positions, recs[:, 4], insert),
        block_tables=upd(s.block_tables, bt, kind != PAD),
        active=upd(s.active, jnp.ones_like(insert), insert),
        remaining=upd(s.remaining, recs[:, 5], insert),
        stop_ids=upd(s.stop_ids, recs[:, _HEAD : _HEAD + num_stop], insert),
        keys=upd(s.keys, bits(recs[:, 7:9], jnp.uint32), insert),
        temperature=upd(s.temperature, bits(recs[:, 9], jnp.float32), insert),
        top_k=upd(s.top_k, recs[:, 6], insert),
        top_p=upd(s.top_p, bits(recs[:, 10], jnp.float32), insert),
    )
    return SlotState(slots, packed[-1, :max_rows])


def take_rows(state: SlotState, b: int, width: int) -> DecodeBatch:
    """The first `b` rows' records [b, ...], block tables cut to `width` pages."""
    idx = state.rows[:b]
    rows = jax.tree.map(lambda x: x[idx], state.slots)
    return rows.replace(block_tables=rows.block_tables[:, :width])


def put_rows(state: SlotState, b: int, rows: DecodeBatch) -> SlotState:
    """Write back what a decode chunk changed (token, position, active, remaining)."""
    idx = state.rows[:b]
    s = state.slots
    slots = s.replace(
        tokens=s.tokens.at[idx].set(rows.tokens),
        positions=s.positions.at[idx].set(rows.positions),
        active=s.active.at[idx].set(rows.active),
        remaining=s.remaining.at[idx].set(rows.remaining),
    )
    return SlotState(slots, state.rows)
