"""Decode throughput of jaxserve against PyTorch `transformers` and the machine's weight bandwidth.

Usage::

    python scripts/bench_decode.py [--preset=small] [--prompt_len=64] [--new_tokens=128]
        [--batch_sizes=1,16] [--reps=7] [--compile_check_tokens=200] [--out=bench_decode.json]

One run builds the preset with random weights (`init_model(config, seed)`), writes them as an
HF checkpoint (`save_hf`) and loads that into `transformers.LlamaForCausalLM`, so both engines
run the *same* fp32 weights on the same prompts (random ids, `prompt_len` each), greedy.
For every batch size the measurements are interleaved round by round (jaxserve, torch, numpy)
because the machine is shared and noisy; every ratio is computed from figures of this run.

Figures (times are medians over rounds, after warm-up with the same shapes). Each round records
the CPU that *other* processes used meanwhile (/proc/stat minus this process's CPU time); on
this shared 2-core machine torch's OpenMP threads slow down 2-10x when anything else runs, far
more than XLA. Rounds with less than `--quiet_cores` of foreign CPU are "quiet"; while fewer
than `--reps` rounds were quiet, extra rounds run (up to `--max_rounds`, within
`--time_budget_s` of the start; past it, a batch size gets min(3, reps) rounds only).
Headline figures are medians over the quiet rounds if at least min(3, `--reps`) were quiet,
else over all rounds with a warning (the report says which); all-rounds and fastest-round
figures are printed as well:

* prefill ms: a generation with `max_new_tokens=1` (prompt in, first token out).
* decode ms/step and decode tok/s: prefill is excluded by *subtraction*:
  `decode_s = median T(new_tokens) - median T(1)`, which covers `new_tokens - 1` decode steps
  (the first token comes from prefill); `ms/step = decode_s / (new_tokens - 1)` and
  `tok/s = batch * (new_tokens - 1) / decode_s`. The same method is applied to torch
  (`generate(do_sample=False, min_new_tokens=max_new_tokens=N)`, default torch threads).
  jaxserve runs the two lengths on two `Generator`s over the same model, because a Generator
  reallocates its KV pool whenever the page count changes (the two lengths need different
  counts), which would otherwise land inside every timed call.
  jaxserve decodes whole chunks (`ceil((N - 1) / chunk) * chunk` steps: 128 for N=128); only
  the N - 1 useful tokens are credited, so any rounding waste is charged to it.
* e2e tok/s: `batch * new_tokens / T(new_tokens)`, prefill included.
* ratio (a) = jaxserve decode tok/s / torch decode tok/s (goal >= 1.5 at batch 16).
* weight bytes per step: bytes of every parameter a decode step reads. For an untied model
  the input embedding table is left out (a step gathers only `batch` rows of it); the LM head
  is counted. KV-cache reads are not counted.
* numpy bandwidth: bytes/s of one float32 matrix-vector product `W @ x` with
  `W.nbytes == weight bytes per step` (shape `[bytes / 4 / d_model, d_model]`), median of
  `--numpy_reps` products per round, the median over the rounds used.
* ratio (b) = weight bytes per step * decode steps/s / numpy bandwidth, for jaxserve and torch
  (goal >= 0.7 at batch 1): the fraction of the machine's matvec weight bandwidth a decode
  step achieves. Also printed: numpy `W @ X` with `X` of `batch` columns (the same weights and
  FLOPs as one decode step's matmuls, as one BLAS call) and each engine's step speed relative
  to it (OpenBLAS is slow for such skinny products, so at batch > 1 this is no hard limit).
* best ms/step, and "fastest rounds" ratios: the same formulas on the minimum time of each
  length (and the fastest round's median numpy matvec).
* parity: the fraction of generated tokens identical between jaxserve and torch (greedy, fp32,
  expected 1.0), and the first differing position of each row.
* compile count: one Generator warmed up with `compile_check_tokens` new tokens at each batch
  size, then the same generation again must compile nothing (`CompileCounter`). Also reported:
  compilations during the timed rounds, and after switching back to the first batch size.

Everything is printed as a table and written to `--out` (JSON), with the flags and environment.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
from flax import nnx

from jaxserve.config import ModelConfig, get_preset
from jaxserve.generate import Generator
from jaxserve.models.transformer import Decoder, init_model
from jaxserve.models.weights import save_hf
from jaxserve.runner import CompileCounter
from jaxserve.sampling import SamplingParams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--seed", type=int, default=0, help="weights and prompts")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--batch_sizes", default="1,16", help="comma-separated")
    p.add_argument("--reps", type=int, default=7, help="timed rounds per batch size")
    p.add_argument(
        "--quiet_cores",
        type=float,
        default=0.1,
        help="a round is quiet when other processes used less CPU than this (cores)",
    )
    p.add_argument(
        "--max_rounds",
        type=int,
        default=0,
        help="extra rounds while fewer than --reps were quiet, up to this many (0: 2 x reps)",
    )
    p.add_argument(
        "--time_budget_s",
        type=float,
        default=240,
        help="no extra rounds after this many s of the run",
    )
    p.add_argument("--numpy_reps", type=int, default=30, help="matvecs per round")
    p.add_argument("--compile_check_tokens", type=int, default=200)
    p.add_argument("--page_size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--out", default="bench_decode.json")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    args.max_rounds = max(args.reps, args.max_rounds or 2 * args.reps)
    if args.new_tokens < 2:
        p.error("--new_tokens must be >= 2 (one prefill token plus decode steps)")
    if args.reps < 1 or args.numpy_reps < 1 or not args.batch_sizes:
        p.error("--reps, --numpy_reps and --batch_sizes must be positive / non-empty")
    return args


# -- helpers ---------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class ForeignLoad:
    """CPU cores busy with *other* processes over an interval (Linux /proc/stat), else None.

    busy jiffies of the whole machine minus this process's CPU time, divided by wall time: a
    shared 2-core machine makes torch's OpenMP threads (and less so XLA's) several times slower
    whenever something else runs, so every round records how loaded the machine was.
    """

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        return busy / self.hz, time.process_time(), time.perf_counter()

    def cores(self) -> float | None:
        """Foreign cores since construction or the previous call."""
        now = self._sample()
        start, self._start = self._start, now
        if now is None or start is None or now[2] <= start[2]:
            return None
        foreign = (now[0] - start[0]) - (now[1] - start[1])
        return max(0.0, foreign / (now[2] - start[2]))


def weight_bytes_per_step(model: Decoder, config: ModelConfig) -> tuple[int, int, int]:
    """(bytes a decode step reads, bytes of all parameters, bytes of the input embedding)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    total = embed = 0
    for path, var in flat:
        n = int(np.asarray(var[...]).nbytes)
        total += n
        if path == ("embed",):
            embed = n
    # Tied: the table is the LM head too, read in full. Untied: only B rows are gathered.
    step = total if config.tie_embeddings else total - embed
    return step, total, embed


def environment() -> dict[str, Any]:
    import torch
    import transformers

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "flax": flax.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "env": {
            k: os.environ.get(k)
            for k in ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        },
    }


class NumpyBandwidth:
    """`W @ x` over a float32 W with the decode step's weight bytes, and `W @ X` for batches."""

    def __init__(self, n_bytes: int, d_model: int, seed: int):
        rows = max(1, round(n_bytes / 4 / d_model))
        rng = np.random.default_rng(seed)
        self.w = rng.standard_normal((rows, d_model), dtype=np.float32)
        self.x = rng.standard_normal((d_model,), dtype=np.float32)
        self.y = np.empty((rows,), np.float32)
        self._gemm: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def nbytes(self) -> int:
        return int(self.w.nbytes)

    def matvec_times(self, reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.dot(self.w, self.x, out=self.y)
            out.append(time.perf_counter() - t0)
        return out

    def gemm_times(self, batch: int, reps: int) -> list[float]:
        if batch == 1:
            return self.matvec_times(reps)
        if batch not in self._gemm:
            x = np.random.default_rng(batch).standard_normal(
                (self.w.shape[1], batch), dtype=np.float32
            )
            self._gemm[batch] = (x, np.empty((self.w.shape[0], batch), np.float32))
        x, y = self._gemm[batch]
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(self.w, x, out=y)
            out.append(time.perf_counter() - t0)
        return out


def load_torch_model(model: Decoder, workdir: str):
    import torch
    import transformers

    save_hf(model, workdir)
    tm = transformers.LlamaForCausalLM.from_pretrained(workdir, dtype=torch.float32)
    return tm.eval()


def torch_generate(tm, prompts: np.ndarray, n: int, pad_id: int) -> np.ndarray:
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64))
    out = tm.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        pad_token_id=pad_id,
    )
    return out[:, prompts.shape[1] :].numpy()


def decode_figures(t_full: list[float], t_prefill: list[float], batch: int, n: int) -> dict:
    """Median-based figures of one engine over the selected rounds."""
    full, pre = median(t_full), median(t_prefill)
    decode_s = full - pre
    steps = n - 1
    ok = decode_s > 0
    return {
        "total_s": full,
        "prefill_ms": pre * 1e3,
        "decode_s": decode_s,
        "decode_steps": steps,
        "ms_per_step": decode_s / steps * 1e3 if ok else float("nan"),
        "decode_tok_s": batch * steps / decode_s if ok else float("nan"),
        "e2e_tok_s": batch * n / full,
        # the fastest round of each length: the figure least disturbed by other processes
        "ms_per_step_best": (min(t_full) - min(t_prefill)) / steps * 1e3,
    }


def summarize(rounds: list[dict], batch: int, n: int, step_bytes: int, np_bytes: int) -> dict:
    """Ratios (a) and (b) from a set of rounds (each holds one time per measurement)."""
    np_t = [r["numpy_matvec_s"] for r in rounds]
    bw, bw_best = np_bytes / median(np_t), np_bytes / min(np_t)
    gemm_ms = median([r["numpy_gemm_s"] for r in rounds]) * 1e3
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "numpy_matvec_ms": median(np_t) * 1e3,
        "numpy_bandwidth_Bps": bw,
        "numpy_bandwidth_best_Bps": bw_best,  # fastest round's median, like the engines' best
        "numpy_gemm_batch_ms": gemm_ms,
    }
    for name in ("jaxserve", "torch"):
        f = decode_figures(
            [r[name + "_full_s"] for r in rounds],
            [r[name + "_prefill_s"] for r in rounds],
            batch,
            n,
        )
        f["weight_Bps"] = step_bytes * 1e3 / f["ms_per_step"]
        f["ratio_b"] = f["weight_Bps"] / bw
        f["ratio_b_best"] = step_bytes * 1e3 / f["ms_per_step_best"] / bw_best
        f["vs_numpy_gemm_step"] = gemm_ms / f["ms_per_step"]
        out[name] = f
    out["ratio_a"] = out["jaxserve"]["decode_tok_s"] / out["torch"]["decode_tok_s"]
    out["ratio_a_best"] = out["torch"]["ms_per_step_best"] / out["jaxserve"]["ms_per_step_best"]
    return out


# -- measurements ----------------------------------------------------------------------------


def bench_batch(
    args, model, tm, npbw: NumpyBandwidth, step_bytes: int, batch: int, rng, deadline_base: float
) -> dict:
    cfg = model.config
    n = args.new_tokens
    prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len), dtype=np.int64)
    plist = prompts.tolist()
    pad_id = cfg.eos_token_id if cfg.eos_token_id is not None else 0
    # Two Generators: one would reallocate its KV pool each time the page count changes.
    gens = {k: Generator(model, page_size=args.page_size, chunk=args.chunk) for k in "fp"}
    sp_full, sp_pre = SamplingParams(max_new_tokens=n), SamplingParams(max_new_tokens=1)

    def jax_full():
        return np.array([c.token_ids for c in gens["f"].generate(plist, sp_full)])

    def jax_pre():
        return gens["p"].generate(plist, sp_pre)

    c0 = CompileCounter.count()
    t_warm = time.perf_counter()
    for _ in range(2):  # the first call compiles, the second settles allocations
        jax_full()
        jax_pre()
        torch_generate(tm, prompts, n, pad_id)
        torch_generate(tm, prompts, 1, pad_id)
    warm_s = time.perf_counter() - t_warm
    warm_compiles = CompileCounter.count() - c0

    rounds: list[dict] = []
    c1 = CompileCounter.count()
    t_loop = time.perf_counter()

    def quiet(r: dict) -> bool:
        return r["other_cores"] is not None and r["other_cores"] < args.quiet_cores

    def more() -> bool:
        if len(rounds) < min(3, args.reps):
            return True
        in_time = time.perf_counter() - deadline_base < args.time_budget_s
        if len(rounds) < args.reps:  # past the budget, a busy machine gets 3 rounds only
            return in_time
        return in_time and sum(map(quiet, rounds)) < args.reps and len(rounds) < args.max_rounds

    while more():
        load = ForeignLoad()
        r: dict[str, Any] = {}
        r["jaxserve_full_s"], jax_tokens = timed(jax_full)
        r["jaxserve_prefill_s"] = timed(jax_pre)[0]
        r["torch_full_s"], torch_tokens = timed(lambda: torch_generate(tm, prompts, n, pad_id))
        r["torch_prefill_s"] = timed(lambda: torch_generate(tm, prompts, 1, pad_id))[0]
        r["numpy_matvec_s"] = median(npbw.matvec_times(args.numpy_reps))
        r["numpy_gemm_s"] = median(npbw.gemm_times(batch, max(3, args.numpy_reps // 3)))
        r["other_cores"] = load.cores()
        rounds.append(r)
        other = "n/a" if r["other_cores"] is None else f"{r['other_cores']:.2f} cores"
        print(
            f"  batch {batch} round {len(rounds)}: jaxserve {r['jaxserve_full_s']:.3f}s/"
            f"{r['jaxserve_prefill_s']:.3f}s torch {r['torch_full_s']:.3f}s/"
            f"{r['torch_prefill_s']:.3f}s (T({n}) / T(1)); numpy matvec "
            f"{r['numpy_matvec_s'] * 1e3:.2f} ms; other processes {other}",
            flush=True,
        )
    timed_compiles = CompileCounter.count() - c1
    gens.clear()  # free their KV pools
    gc.collect()

    same = jax_tokens == torch_tokens
    first_diff = [int(np.argmin(row)) if not row.all() else None for row in same]
    quiet_rounds = [r for r in rounds if quiet(r)]
    use_quiet = len(quiet_rounds) >= min(3, args.reps)
    res: dict[str, Any] = {
        "batch": batch,
        "warmup_s": warm_s,
        "warmup_compiles": warm_compiles,
        "timed_loop_s": time.perf_counter() - t_loop,
        "compiles_during_timed_rounds": timed_compiles,
        "headline_rounds": "quiet" if use_quiet else "all",
        **summarize(quiet_rounds if use_quiet else rounds, batch, n, step_bytes, npbw.nbytes),
        "all_rounds": summarize(rounds, batch, n, step_bytes, npbw.nbytes),
        "quiet_rounds": len(quiet_rounds),
        "round_data": rounds,
        "parity": {
            "fraction_identical": float(same.mean()),
            "first_diff_per_row": first_diff,
            "jaxserve_eos_count": int((jax_tokens == cfg.eos_token_id).sum()),
        },
    }
    return res


def compile_check(args, model, rng) -> dict:
    """One Generator: warm up each batch size, then the same generation must compile nothing."""
    cfg = model.config
    n = args.compile_check_tokens
    gen = Generator(model, page_size=args.page_size, chunk=args.chunk)
    sp = SamplingParams(max_new_tokens=n)
    prompts = {
        b: rng.integers(3, cfg.vocab_size, (b, args.prompt_len)).tolist() for b in args.batch_sizes
    }
    out: dict[str, Any] = {"new_tokens": n, "per_batch": {}}
    for b in args.batch_sizes:
        c0 = CompileCounter.count()
        gen.generate(prompts[b], sp)  # warm-up, same shapes
        c1 = CompileCounter.count()
        dt, comps = timed(lambda b=b: gen.generate(prompts[b], sp))
        c2 = CompileCounter.count()
        lens = sorted({len(c.token_ids) for c in comps})
        out["per_batch"][str(b)] = {
            "warmup_compiles": c1 - c0,
            "compiles_after_warmup": c2 - c1,
            "seconds": dt,
            "generated_lengths": lens,
        }
    if len(args.batch_sizes) > 1:
        b = args.batch_sizes[0]
        c0 = CompileCounter.count()
        gen.generate(prompts[b], sp)
        out["compiles_switching_back_to_batch"] = {str(b): CompileCounter.count() - c0}
    return out


# -- report ----------------------------------------------------------------------------------


def print_report(report: dict) -> None:
    env, m, a = report["environment"], report["model"], report["flags"]
    print()
    print("=" * 100)
    print(
        f"device: jax {env['jax_backend']} {env['jax_devices']}; cpu_count {env['cpu_count']} "
        f"(affinity {env['cpu_affinity']}); torch threads {env['torch_threads']}"
    )
    print(
        f"versions: python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, "
        f"flax {env['flax']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"numpy {env['numpy']}"
    )
    print(f"platform: {env['platform']}")
    print(
        f"model: preset {m['preset']} ({m['params']:,} params, fp32, tied={m['tied']}), "
        f"prompt {a['prompt_len']}, new tokens {a['new_tokens']}, greedy"
    )
    print(
        f"weight bytes per decode step: {m['weight_bytes_per_step'] / 2**20:.2f} MiB "
        f"({m['weight_bytes_per_step']:,} B) = all parameters "
        + (
            f"minus the input embedding table ({m['embed_bytes'] / 2**20:.2f} MiB; a step "
            "gathers only B rows of it)"
            if not m["tied"]
            else "(tied: the embedding is the LM head, read in full)"
        )
    )
    print(f"decode time = median T({a['new_tokens']} new) - median T(1 new) [prefill only]; "
          f"{a['new_tokens'] - 1} decode steps; same method for torch")  # fmt: skip
    print(
        f"medians over the quiet rounds (other processes < {a['quiet_cores']} cores) when at "
        f"least {min(3, a['reps'])} were quiet, else over all rounds"
    )
    print("-" * 100)
    hdr = (
        f"{'batch':>5} {'engine':<9} {'prefill ms':>10} {'T(N) s':>8} {'ms/step':>8} "
        f"{'decode tok/s':>12} {'e2e tok/s':>10} {'weights GB/s':>12} {'ratio(b)':>9} "
        f"{'best ms/step':>12}"
    )
    print(hdr)
    for r in report["results"]:
        for name in ("jaxserve", "torch"):
            f = r[name]
            print(
                f"{r['batch']:>5} {name:<9} {f['prefill_ms']:>10.1f} {f['total_s']:>8.3f} "
                f"{f['ms_per_step']:>8.2f} {f['decode_tok_s']:>12.1f} {f['e2e_tok_s']:>10.1f} "
                f"{f['weight_Bps'] / 1e9:>12.1f} {f['ratio_b']:>9.2f} "
                f"{f['ms_per_step_best']:>12.2f}"
            )
        print(
            f"{r['batch']:>5} {'numpy':<9} matvec {r['numpy_matvec_ms']:.2f} ms = "
            f"{r['numpy_bandwidth_Bps'] / 1e9:.1f} GB/s; W @ X[{r['batch']} cols] "
            f"{r['numpy_gemm_batch_ms']:.2f} ms (a decode step runs at "
            f"{r['jaxserve']['vs_numpy_gemm_step']:.2f}x (jaxserve) / "
            f"{r['torch']['vs_numpy_gemm_step']:.2f}x (torch) of its speed)"
        )
        loads = ["n/a" if d["other_cores"] is None else f"{d['other_cores']:.2f}"
                 for d in r["round_data"]]  # fmt: skip
        print(
            f"{'':>5} {'rounds':<9} {r['rounds']} of {len(loads)} used ({r['headline_rounds']}); "
            "other processes' CPU per round: " + " ".join(loads) + " cores"
        )
        if r["headline_rounds"] == "all" and r["quiet_rounds"] < len(loads):
            print(
                f"{'':>5} WARNING: too few quiet rounds ({r['quiet_rounds']}): other processes "
                "competed for the CPU; torch and numpy suffer most, so these ratios are unreliable"
            )
    print("-" * 100)
    for r in report["results"]:
        p = r["parity"]
        diffs = [d for d in p["first_diff_per_row"] if d is not None]
        print(
            f"batch {r['batch']:>2}: ratio (a) jaxserve/torch decode tok/s = {r['ratio_a']:.2f} "
            f"(goal >= 1.5 at batch 16); ratio (b) jaxserve {r['jaxserve']['ratio_b']:.2f}, "
            f"torch {r['torch']['ratio_b']:.2f} (goal >= 0.7 at batch 1)"
        )
        al = r["all_rounds"]
        print(
            f"          all {al['rounds']} rounds: ratio (a) {al['ratio_a']:.2f}, ratio (b) "
            f"jaxserve {al['jaxserve']['ratio_b']:.2f}, torch {al['torch']['ratio_b']:.2f}; "
            f"fastest rounds: ratio (a) {al['ratio_a_best']:.2f}, ratio (b) jaxserve "
            f"{al['jaxserve']['ratio_b_best']:.2f}, torch {al['torch']['ratio_b_best']:.2f}"
        )
        print(
            f"          parity: {p['fraction_identical']:.4f} of tokens identical; rows "
            f"differing {len(diffs)}/{r['batch']}"
            + (f" (first at step {min(diffs)})" if diffs else "")
            + f"; compiles: warm-up {r['warmup_compiles']}, timed rounds "
            f"{r['compiles_during_timed_rounds']}"
        )
    cc = report["compile_check"]
    per = ", ".join(
        f"batch {b}: {v['compiles_after_warmup']} (warm-up {v['warmup_compiles']})"
        for b, v in cc["per_batch"].items()
    )
    print(f"compile count, {cc['new_tokens']} new tokens after warm-up (goal 0): {per}")
    if "compiles_switching_back_to_batch" in cc:
        (b, v), = cc["compiles_switching_back_to_batch"].items()  # fmt: skip
        print(f"  same Generator, back to batch {b} after the other sizes: {v} compilations")
    print(f"total runtime {report['runtime_s']:.1f} s; JSON: {report['out']}")
    print("=" * 100)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
    args = parse_args(argv)
    t_start = time.perf_counter()
    env = environment()
    cfg = get_preset(args.preset)
    if args.prompt_len + max(args.new_tokens, args.compile_check_tokens) > cfg.max_seq_len:
        raise SystemExit("prompt_len + new tokens exceeds the preset's max_seq_len")
    print(f"building {args.preset} (seed {args.seed}), saving HF checkpoint, loading torch ...")
    model = init_model(cfg, args.seed)
    step_bytes, total_bytes, embed_bytes = weight_bytes_per_step(model, cfg)
    expected = cfg.num_params(include_embeddings=False) * np.dtype(cfg.param_dtype).itemsize
    if step_bytes != expected and not cfg.tie_embeddings:
        print(f"warning: parameter bytes {step_bytes} != config estimate {expected}")
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as d:
        tm = load_torch_model(model, d)
    torch_params = sum(p.numel() for p in tm.parameters())
    npbw = NumpyBandwidth(step_bytes, cfg.d_model, args.seed)
    rng = np.random.default_rng(args.seed)

    results = []
    for b in args.batch_sizes:
        print(f"batch {b}: warming up (compiles) ...", flush=True)
        results.append(bench_batch(args, model, tm, npbw, step_bytes, b, rng, t_start))
    print("compile check ...", flush=True)
    cc = compile_check(args, model, rng)

    report = {
        "flags": {k: v for k, v in vars(args).items()},
        "environment": env,
        "model": {
            "preset": args.preset,
            "params": total_bytes // np.dtype(cfg.param_dtype).itemsize,
            "torch_params": torch_params,
            "tied": cfg.tie_embeddings,
            "param_bytes": total_bytes,
            "embed_bytes": embed_bytes,
            "weight_bytes_per_step": step_bytes,
            "numpy_matrix_bytes": npbw.nbytes,
            "numpy_matrix_shape": list(npbw.w.shape),
            "weight_bytes_note": (
                "all parameters; the untied input embedding table is excluded (a decode step "
                "gathers only B rows of it); KV-cache reads are not counted"
            ),
        },
        "method": (
            "decode_s = median T(new_tokens) - median T(1) (prefill-only generation), "
            "new_tokens-1 decode steps, same for torch; medians over reps rounds that "
            "interleave jaxserve, torch and numpy; ratio_a = jaxserve/torch decode tok/s; "
            "ratio_b = weight_bytes_per_step * steps/s / numpy W@x bandwidth"
        ),
        "results": results,
        "compile_check": cc,
        "runtime_s": time.perf_counter() - t_start,
        "out": os.path.abspath(args.out),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print_report(report)
    return report


if __name__ == "__main__":
    main()
