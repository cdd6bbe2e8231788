"""Profile the running model on this device: the tables the schedulers and cost models need.

    prefill[(input_len, seconds)]   first-iteration time by input length (skip-join's table)
    decode[(batch, seconds)]        one decode iteration by batch size (scales MLFQ's q0)
    swap_bandwidth                  bytes/s of a host-tier round trip
    prefill_tokens_per_s            for the swap-vs-recompute choice (the base model's exact
                                    prefill, also for a model that predicts its cache)
    predict_tokens_per_s            a model that predicts its prompts' cache (KV prediction):
                                    its prefill's throughput, the cost of re-predicting a
                                    dropped request's cache (None for other models)

and, for the simulator's calibrated cost model (`jaxserve.sim.calibrated`):

    decode_grid[(batch, context, steps, seconds)]  one decode call by batch, context tokens
                                    attended (block-table width x page size) and steps
    swap[(bytes, seconds)]          one swap-out + swap-in round trip by size
    slot_update                     seconds of one update of the engine's device-resident
                                    decode batch (`ModelRunner.update_slots`), paid by a step
                                    whose rows or block tables changed
    host_per_iteration              host seconds per engine iteration (plan, dispatch, read),
                                    from a short engine run (`host_seconds`)

Each figure is the median of warm repetitions (compilation excluded). A profile is saved as
JSON next to the experiment, with the model and device that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxserve.batch import DecodeBatch, PrefillBatch
from jaxserve.errors import InputError
from jaxserve.kvcache.host import HostTier
from jaxserve.runner import ModelRunner
from jaxserve.sampling import sampling_arrays


@dataclasses.dataclass
class Profile:
    model: str
    device: str
    prefill: list[tuple[int, float]]
    decode: list[tuple[int, float]]
    swap_bandwidth: float
    prefill_tokens_per_s: float
    page_size: int = 16
    decode_grid: list[tuple[int, int, int, float]] = dataclasses.field(default_factory=list)
    swap: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # round trips
    host_per_iteration: float | None = None  # seconds; None: not measured
    slot_update: float | None = None  # seconds; None: not measured
    predict_tokens_per_s: float | None = None  # None: the model does not predict its cache

    def prefill_time(self, input_len: int) -> float:
        """Linear interpolation (and extrapolation past the ends) of the prefill table."""
        return _interp(self.prefill, input_len)

    def decode_time(self, batch: int) -> float:
        return _interp(self.decode, batch)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str) -> Profile:
        try:
            with open(path) as f:
                d = json.load(f)
        except OSError as e:
            raise InputError(f"{path}: cannot read the profile ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a JSON profile ({e})") from None
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError) as e:
            raise InputError(f"{path}: not a profile ({e})") from None

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        """The profile of `dataclasses.asdict` after a trip through JSON (lists to tuples)."""
        d = dict(d)
        d["prefill"] = [tuple(x) for x in d["prefill"]]
        d["decode"] = [tuple(x) for x in d["decode"]]
        d["decode_grid"] = [tuple(x) for x in d.get("decode_grid", [])]
        d["swap"] = [tuple(x) for x in d.get("swap", [])]
        return cls(**d)


def _interp(table: Sequence[tuple[float, float]], x: float) -> float:
    pts = sorted(table)
    if len(pts) == 1:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1 or (x1, y1) == pts[-1]:
            return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    raise AssertionError("unreachable")


def _median_time(fn, reps: int) -> float:
    fn()  # compile and warm
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile(
    runner: ModelRunner,
    page_size: int = 16,
    lengths: Sequence[int] | None = None,
    batches: Sequence[int] = (1, 2, 4, 8),
    reps: int = 3,
    contexts: Sequence[int] | None = None,
    steps: Sequence[int] = (1,),
    swap_pages: Sequence[int] | None = None,
    num_pages: int = 0,
    host_mode: str = "auto",
) -> Profile:
    """Time prefill at `lengths`, decode at `batches` (context max(lengths) // 2), and a swap
    of max(lengths) tokens. With `contexts` (tokens attended; rounded up to whole pages), the
    decode grid covers batches x contexts x `steps` (decode steps per call); with
    `swap_pages`, swap round trips of those many pages. The pool has at least `num_pages`
    pages: with the engine's pool size, its prefill programs are the engine's too. Every
    program is compiled first, several at a time (`ModelRunner.compile_ahead`). `host_mode`:
    the host tier's.

    On a mesh whose "data" axis splits rows over d devices, a batch of b rows runs padded to
    a multiple of d (the engine's smallest batch is d rows): the tables keep b, timed on the
    padded batch (batch 1 and every prefill are timed as d rows)."""
    config = runner.config
    if lengths is None:
        top = min(config.max_seq_len, 1024)
        lengths = [2**i for i in range(4, int(math.log2(top)) + 1)]
    max_len = max(max(lengths), *(contexts or [0]))
    width = math.ceil(max_len / page_size)

    def padded(b: int) -> int:  # rows a batch of b runs as: a multiple of the data axis
        return -(-b // runner.data_size) * runner.data_size

    kv = runner.new_kv(max(1 + padded(max(max(batches), 1)) * width, num_pages), page_size)
    state = {"kv": kv}

    def prefill(n: int, base: bool = False):
        rows = padded(1)  # one prompt; padding rows of length 0 on page 0, as the engine's
        tokens, lengths = np.zeros((rows, n), np.int32), np.zeros(rows, np.int32)
        tokens[0], lengths[0] = 1, n
        block_tables = np.zeros((rows, math.ceil(n / page_size)), np.int32)
        block_tables[0] = np.arange(1, 1 + block_tables.shape[1])
        batch = PrefillBatch(  # host arrays, as the engine passes them
            tokens=tokens,
            lengths=lengths,
            block_tables=block_tables,
            **sampling_arrays([], [], rows),
        )

        def run():
            state["kv"], first = runner.prefill(state["kv"], batch, base=base)
            if runner.ahead is None:
                first.block_until_ready()

        return run

    def decode(b: int, context: int | None = None, k: int = 1):
        b = padded(b)
        w = width if context is None else math.ceil(context / page_size)
        pos = max(lengths) // 2 if context is None else context - k
        bt = (1 + np.arange(b * w, dtype=np.int32)).reshape(b, w)
        batch = runner.put_batch(
            DecodeBatch(
                tokens=np.ones(b, np.int32),
                positions=np.full(b, max(pos, 0), np.int32),
                block_tables=bt,
                active=np.ones(b, bool),
                remaining=np.full(b, k + 1, np.int32),
                stop_ids=np.full((b, 1), -1, np.int32),
                **sampling_arrays([], [], b),
            )
        )

        def run():
            state["kv"], _, toks, _ = runner.decode(state["kv"], batch, k)
            if runner.ahead is None:
                toks.block_until_ready()

        return run

    prefills = {n: prefill(n) for n in lengths}
    decodes = {b: decode(b) for b in batches}
    cells = [(b, c, k) for b in batches for c in contexts or () for k in steps]
    cell_runs = [decode(*cell) for cell in cells]
    base_run = prefill(lengths[-1], base=True) if runner.can_predict else None
    with runner.compile_ahead():  # lower every program, compile them side by side
        for run in [*prefills.values(), *decodes.values(), *cell_runs, base_run]:
            if run is not None:
                run()
    prefill_table = [(n, _median_time(prefills[n], reps)) for n in lengths]
    decode_table = [(b, _median_time(decodes[b], reps)) for b in batches]
    grid = [(b, max_len // 2, 1, t) for b, t in decode_table]
    if contexts:
        grid = [
            (b, math.ceil(c / page_size) * page_size, k, _median_time(run, reps))
            for (b, c, k), run in zip(cells, cell_runs)
        ]
    tier = HostTier(runner.kv_sharding, host_mode)
    pages = list(range(1, 1 + min(width, state["kv"].num_pages - 1)))

    def swap():
        host = tier.swap_out(state["kv"], pages)
        state["kv"] = tier.swap_in(state["kv"], host, pages)
        state["kv"].block_until_ready()
        return host.nbytes

    nbytes = tier.swap_out(state["kv"], pages).nbytes
    swap_s = _median_time(swap, reps)
    swaps = [(nbytes, swap_s)]
    for n in swap_pages or ():
        pages = list(range(1, 1 + min(n, state["kv"].num_pages - 1)))
        swaps.append((tier.swap_out(state["kv"], pages).nbytes, _median_time(swap, reps)))
    slot_update = None
    if contexts:  # the simulator's measurements
        from jaxserve.batch import SlotUpdates

        rows, num_stop = max(batches), 4
        state["slots"] = runner.new_slots(rows, rows, width + 1, num_stop)
        packed = SlotUpdates(rows, rows, width + 1, num_stop).pack(range(rows), min_records=1)
        no_prefill = jax.device_put(np.zeros(1, np.int32))

        def update():
            state["slots"] = runner.update_slots(state["slots"], packed, no_prefill)
            jax.block_until_ready(state["slots"])

        slot_update = _median_time(update, reps)
    n_big, t_big = prefill_table[-1]
    prefill_rate, predict_rate = n_big / t_big, None
    if runner.can_predict:  # the table is the prediction's; recovery by recompute is the base's
        predict_rate = prefill_rate
        prefill_rate = n_big / _median_time(base_run, reps)
    return Profile(
        model=config.name,
        device=str(jax.devices()[0].device_kind),
        prefill=prefill_table,
        decode=decode_table,
        swap_bandwidth=2 * nbytes / swap_s,  # out and back in
        prefill_tokens_per_s=prefill_rate,
        predict_tokens_per_s=predict_rate,
        page_size=page_size,
        decode_grid=grid,
        swap=swaps,
        slot_update=slot_update,
    )


def host_seconds(engine) -> float | None:
    """Host seconds per iteration of an engine that has run (`Engine.host_time`: planning,
    dispatch and reading, not the wait for the device); None before any iteration. Store it
    in `Profile.host_per_iteration` for the simulator."""
    if not engine.iterations:
        return None
    h = engine.host_time
    return (h["schedule"] + h["dispatch"] + h["read"]) / engine.iterations
