"""The analytical cost model: a roofline from accelerator specs and the model's shape.

    one layer, on one device (tensor parallel over tp devices):
      flops  = 2 T P_layer / tp                         matmuls over T new tokens
             + 4 sum_prefill n(n+1)/2 H hd / tp          causal attention of each prompt
             + 4 sum_decode c H hd / tp                  each decode row attends c tokens
      bytes  = P_layer w / tp                            weights, read once per step
             + (sum_decode c + T) 2 Hkv' hd w_kv          KV read by decode rows, KV written
      time   = max(flops / (peak e_f), bytes / (hbm e_m))
             + 2 all-reduces of T d w_act bytes (ring: 2 (tp-1)/tp bytes / link + 2 (tp-1) lat)
    a stage = num_layers / pp layers (+ the output head on the last)
    pipeline: the batch in m micro-batches; an iteration = (m + pp - 1) stage times of one
      micro-batch (the bubble is the pp - 1) + pp - 1 activation sends
    swap:   each device moves its shard of the KV over its own host link, in parallel
    recompute: a prefill of the whole context (the scheduler plans it as one)

Hkv' = max(1, Hkv / tp): KV heads are split over the tensor-parallel group, replicated when
there are fewer heads than devices. KV memory per device is what the HBM holds after the
weights and an activation reserve; `kv_pages` turns it into the scheduler's page pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jaxserve.sched.plan import Plan
from jaxserve.sim.hardware import Accelerator
from jaxserve.sim.shapes import ModelShape

__all__ = ["Parallelism", "RooflineCost"]

_ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1, "int8": 1}


@dataclass(frozen=True)
class Parallelism:
    tp: int = 1  # tensor-parallel devices (heads and MLP columns split)
    pp: int = 1  # pipeline stages (layers split)
    microbatches: int | None = None  # per iteration; None: pp

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ValueError(f"tp and pp must be >= 1, got tp={self.tp}, pp={self.pp}")
        if self.microbatches is not None and self.microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {self.microbatches}")

    @property
    def devices(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class RooflineCost:
    """Device seconds of a plan on `hw` running `model` with `par` (module docstring)."""

    hw: Accelerator
    model: ModelShape
    par: Parallelism = Parallelism()
    dtype: str = "bfloat16"  # weights and compute
    kv_dtype: str = "bfloat16"
    page_size: int = 16
    flops_efficiency: float = 1.0  # fraction of peak FLOP/s reached
    bandwidth_efficiency: float = 1.0  # fraction of HBM bandwidth reached
    memory_fraction: float = 0.9  # of HBM usable (the rest: runtime, fragmentation)
    activation_bytes: float = 2e9  # per device, kept for activations and workspace
    # decode-only iteration times by the rows' per-micro-batch counts, then context sums,
    # which is all they depend on: the simulator asks for the same ones again and again
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model.num_layers % self.par.pp:
            raise ValueError(
                f"{self.model.name} has {self.model.num_layers} layers, not divisible into "
                f"pp={self.par.pp} stages"
            )
        for name in ("dtype", "kv_dtype"):
            if getattr(self, name) not in _ITEMSIZE:
                raise ValueError(f"{name} {getattr(self, name)!r}; known: {sorted(_ITEMSIZE)}")
        self.hw.peak(self.dtype)  # raises for a dtype the accelerator has no figure for
        for name in ("flops_efficiency", "bandwidth_efficiency", "memory_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    # -- memory ---------------------------------------------------------------------------

    @property
    def w_bytes(self) -> int:
        return _ITEMSIZE[self.dtype]

    @property
    def kv_itemsize(self) -> int:
        return _ITEMSIZE[self.kv_dtype]

    @property
    def kv_heads_per_device(self) -> float:
        return max(1.0, self.model.num_kv_heads / self.par.tp)

    @property
    def layers_per_stage(self) -> int:
        return self.model.num_layers // self.par.pp

    def weight_bytes_per_device(self) -> float:
        return self.model.num_params * self.w_bytes / self.par.devices

    def kv_bytes_per_token_per_device(self) -> float:
        """K and V of one token on one device (its layers, its heads)."""
        m = self.model
        return 2 * self.layers_per_stage * self.kv_heads_per_device * m.head_dim * self.kv_itemsize

    @property
    def kv_bytes_per_page(self) -> int:
        """K and V of one page over the whole model (what `SchedulerConfig` calls a page)."""
        return self.model.kv_bytes_per_token(self.kv_itemsize) * self.page_size

    def kv_pages(self) -> int:
        """The scheduler's page pool (null page included) that fits every device's HBM."""
        free = (
            self.hw.hbm_bytes * self.memory_fraction
            - self.weight_bytes_per_device()
            - self.activation_bytes
        )
        per_page = self.kv_bytes_per_token_per_device() * self.page_size
        if free < per_page:
            raise ValueError(
                f"{self.model.name} does not fit {self.par.devices} x {self.hw.name} with "
                f"tp={self.par.tp}, pp={self.par.pp}: {self.weight_bytes_per_device() / 1e9:.1f}"
                f" GB of weights per device, {self.hw.hbm_bytes / 1e9:.0f} GB of HBM"
            )
        return int(free // per_page) + 1

    # -- time -----------------------------------------------------------------------------

    def allreduce_time(self, nbytes: float) -> float:
        tp = self.par.tp
        if tp == 1:
            return 0.0
        hw = self.hw
        return 2 * (tp - 1) / tp * nbytes / hw.link_bandwidth + 2 * (tp - 1) * hw.link_latency

    def _roofline(self, flops: float, nbytes: float) -> float:
        compute = flops / (self.hw.peak(self.dtype) * self.flops_efficiency)
        memory = nbytes / (self.hw.hbm_bandwidth * self.bandwidth_efficiency)
        return max(compute, memory)

    def stage_time(self, prefill: Sequence[int], decode: Sequence[int], last: bool) -> float:
        """One pipeline stage's forward over prompts `prefill` and decode rows at contexts
        `decode` (tokens attended, the new one included)."""
        m, tp = self.model, self.par.tp
        tokens = sum(prefill) + len(decode)
        if tokens == 0:
            return 0.0
        qdim = m.num_heads * m.head_dim
        flops = 2 * tokens * m.layer_params / tp
        flops += 4 * sum(n * (n + 1) / 2 for n in prefill) * qdim / tp
        flops += 4 * sum(decode) * qdim / tp
        kv_token = 2 * self.kv_heads_per_device * m.head_dim * self.kv_itemsize
        nbytes = m.layer_params * self.w_bytes / tp + (sum(decode) + tokens) * kv_token
        layer = self._roofline(flops, nbytes)
        layer += 2 * self.allreduce_time(tokens * m.d_model * self.w_bytes)
        t = self.layers_per_stage * layer
        if last:  # output head over one row per sequence
            rows = len(prefill) + len(decode)
            head = m.vocab_size * m.d_model
            t += self._roofline(2 * rows * head / tp, head * self.w_bytes / tp)
        return t

    def compute_time(self, prefill: Sequence[int], decode: Sequence[int]) -> float:
        """One iteration: the batch through every stage, in micro-batches."""
        if not prefill and not decode:
            return 0.0
        pp = self.par.pp
        rows = len(prefill) + len(decode)
        mb = min(self.par.microbatches or pp, rows)
        if pp == 1 and mb == 1:
            return self.stage_time(prefill, decode, last=True)
        # micro-batch j takes every mb-th row: equal shares of prompts and decode rows
        parts = [(prefill[j::mb], decode[j::mb]) for j in range(mb)]
        stage = max(self.stage_time(p, d, last=pp == 1) for p, d in parts)
        last = max(self.stage_time(p, d, last=True) for p, d in parts) if pp > 1 else stage
        tokens = max(sum(p) + len(d) for p, d in parts)
        send = tokens * self.model.d_model * self.w_bytes / self.hw.link_bandwidth
        send += self.hw.link_latency
        # mb micro-batches through pp stages: mb + pp - 1 slots (pp - 1 of them the bubble)
        return (mb + pp - 2) * stage + last + (pp - 1) * send

    def prefill_seconds(self, n: int) -> float:
        """First-iteration time of one prompt of n tokens (skip-join's table)."""
        return self.compute_time([n], [])

    def swap_time(self, num_pages: int) -> float:
        """One device <-> host copy of `num_pages` pages: every device its shard, at once."""
        if not num_pages:
            return 0.0
        nbytes = num_pages * self.page_size * self.kv_bytes_per_token_per_device()
        return nbytes / self.hw.host_bandwidth

    @property
    def swap_bandwidth(self) -> float:
        """Whole-model KV bytes per second of swapping (for `SchedulerConfig`)."""
        return self.kv_bytes_per_page / self.swap_time(1)

    def decode_step_time(self, contexts: Sequence[int]) -> Callable[[int], float]:
        """`j -> iteration_time` of a one-step, decode-only plan of rows at `contexts` + j
        (the same floats; the simulator's steady stretches)."""
        contexts = list(contexts)
        mb = min(self.par.microbatches or self.par.pp, len(contexts)) or 1
        if mb == 1:  # one micro-batch: the time depends on the row count and context sum
            n, total = len(contexts), sum(contexts)
            memo = self._memo.setdefault(n, {})

            def one(j: int) -> float:
                t = memo.get(total + j * n)
                if t is None:
                    if len(memo) > 1 << 16:
                        memo.clear()
                    t = memo[total + j * n] = self.compute_time([], [c + j for c in contexts])
                return t

            return one
        lens = tuple(len(contexts[k::mb]) for k in range(mb))
        sums = [sum(contexts[k::mb]) for k in range(mb)]
        memo = self._memo.setdefault(lens, {})

        def split(j: int) -> float:
            key = tuple(s + j * n for s, n in zip(sums, lens))
            t = memo.get(key)
            if t is None:
                if len(memo) > 1 << 16:
                    memo.clear()
                t = memo[key] = self.compute_time([], [c + j for c in contexts])
            return t

        return split

    def iteration_time(self, plan: Plan, steps: int = 1) -> float:
        t = self.swap_time(plan.swap_out_pages) + self.swap_time(plan.swap_in_pages)
        prefill = [r.context_len for r in plan.prefill]
        decode = [r.context_len for r in plan.decode]
        if steps == 1 and not prefill and not t:  # decode only: `compute_time` by its sums
            return self.decode_step_time(decode)(0) if decode else 0.0
        t += self.compute_time(prefill, decode)
        for j in range(1, steps):  # later steps of a multi-step call: contexts one longer
            t += self.compute_time([], [c + j for c in decode])
        return t
