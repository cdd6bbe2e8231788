"""The engine's dispatch side: a plan's prefills, continuations and decode chunk sent to the
device (`Engine._dispatch`), with the number of decode steps a call may run.

`Dispatching` is a part of `jaxserve.engine.Engine` (its state: `kv`, `device`, `switch`,
`host`, the per-request `_tokens`, `_params`, `_keys`, `_stop_at`, `_reuse`); it holds no state
of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from jaxserve.kvcache.host import HostKV
from jaxserve.sched import Plan, Request


@dataclasses.dataclass
class InFlight:
    """A dispatched iteration whose tokens the host has not read yet."""

    plan: Plan
    prefill_rows: list[Request]  # rows of `prefill_out`
    prefill_out: jax.Array | None  # [Bp] first tokens
    decode_rows: list[Request]  # rows of `decode_out`, batch order
    decode_out: jax.Array | None  # [2, b, k]: tokens, emitted
    dispatched: float  # engine clock at dispatch
    swapped_out: list[HostKV]  # host copies to settle once this step is read
    steps: int = 1  # decode steps in the call


class Dispatching:
    def _dispatch(self, plan: Plan, swapped_out: list[HostKV]) -> InFlight:
        prefill_out, prefill_rows = self._prefill(plan.prefill) if plan.prefill else (None, [])
        decode_out, steps = None, 1
        if plan.decode:
            steps = self._num_steps(plan)
            decode_out = self._decode(plan.decode, steps)
        self.device.dispatched(prefill_out, prefill_rows)
        if self._copy_ahead:  # start the tokens' trip to the host now (not needed on CPU)
            for x in (prefill_out, decode_out):
                if x is not None:
                    x.copy_to_host_async()
        return InFlight(
            plan,
            prefill_rows,
            prefill_out,
            list(plan.decode),
            decode_out,
            self.now(),
            swapped_out,
            steps,
        )

    def _prefill(self, reqs: Sequence[Request]) -> tuple[jax.Array, list[Request]]:
        """Prefill (or recompute) each request's known tokens; their next tokens [B] and the
        requests in row order."""
        seqs = []
        for r in reqs:
            seq = self._tokens[r.id]
            if len(seq) != r.context_len:
                raise AssertionError(
                    f"{r.id}: prefill of {len(seq)} known tokens, context is {r.context_len}"
                )
            seqs.append(seq)
        params = [self._params[r.id] for r in reqs]
        keys = [self._keys[r.id] for r in reqs]
        # "prefill" (the model's), "base" (a drop recovered by the base model's exact
        # prefill) or "extend" (a turn continuing a kept conversation)
        kinds = ["extend" if r.id in self._reuse else self.switch.prefill_kind(r.id) for r in reqs]
        if all(k == "prefill" for k in kinds):
            self.kv, first = self.device.prefill(self.kv, reqs, seqs, params, keys)
            return first, list(reqs)
        # one call per kind, rows in that order: the plain prefill's, the base's, then each
        # continuation (its KV back from the host, then only the new tokens)
        parts, order = [], []
        for kind in ("prefill", "base"):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            if rows:
                picked = [[xs[i] for i in rows] for xs in (reqs, seqs, params, keys)]
                self.kv, out = self.device.prefill(self.kv, *picked, kind == "base")
                parts.append((out, len(rows)))
                order += rows
        for i in (i for i, k in enumerate(kinds) if k == "extend"):
            r, kept = reqs[i], self._reuse.pop(reqs[i].id)
            self.kv = self.host.swap_in(self.kv, kept.host, r.pages[: kept.num_pages])
            self.timelines[r.id].swapped_bytes += kept.host.nbytes
            self.switch.retain(r.id, kept.host, kept.cached)  # its full pages stay valid
            self.kv, out = self.device.extend(self.kv, r, seqs[i], kept.cached, params[i], keys[i])
            parts.append((out, 1))
            order.append(i)
        rows = [reqs[i] for i in order]
        return self.device.assemble(parts, len(rows)), rows

    def _num_steps(self, plan: Plan) -> int:
        """Decode steps for this plan's one device call: 1, or up to `decode_steps` when
        nothing can change meanwhile (module doc)."""
        k = self.decode_steps
        if k == 1 or not self.overlap or plan.prefill or plan.swap_in or plan.swap_out:
            return 1
        sched = self.scheduler
        if sched.num_live != len(plan.decode):
            return 1
        step_time = self._step_time.value
        if self.next_arrival is not None and step_time > 0:
            k = min(k, int((self.next_arrival - self.now()) / step_time))
        limit = sched.config.max_seq_len
        for r in plan.decode:
            p = self._params[r.id]
            if p.stop_strings or len(p.stop_token_ids) > self.device.num_stop:
                return 1
            stop_at = self._stop_at.get(r.id, r.max_new_tokens)
            # no finish by length before the chunk's last token; no page boundary
            room = len(r.pages) * self.page_size - r.context_len + 1
            k = min(
                k,
                r.max_new_tokens - r.num_generated,
                stop_at - r.num_generated,
                limit - r.context_len + 1,
                room,
            )
            if k <= 1:
                return 1
        return k  # every length up to decode_steps runs the same program

    def _decode(self, reqs: Sequence[Request], steps: int) -> jax.Array:
        """Bring the slots up to date (one packed transfer if anything changed), then decode
        `steps` tokens for `reqs` on the device; returns [2, b, steps] (tokens, emitted)."""
        self.kv, out = self.device.decode(
            self.kv, reqs, steps, self._tokens, self._params, self._keys, self._stop_at
        )
        self.decode_calls += 1
        return out
