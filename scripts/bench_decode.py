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
import os
import tempfile
import time
from typing import Any

import numpy as np
from decode_figures import print_report, summarize
from flax import nnx

from jaxserve.bench import NumpyBandwidth, Rounds, median, save_report, timed
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

    rounds = Rounds(args.reps, args.quiet_cores, args.max_rounds, args.time_budget_s, deadline_base)
    c1 = CompileCounter.count()
    t_loop = time.perf_counter()
    while rounds.more():
        with rounds.round() as r:
            r["jaxserve_full_s"], jax_tokens = timed(jax_full)
            r["jaxserve_prefill_s"] = timed(jax_pre)[0]
            r["torch_full_s"], torch_tokens = timed(lambda: torch_generate(tm, prompts, n, pad_id))
            r["torch_prefill_s"] = timed(lambda: torch_generate(tm, prompts, 1, pad_id))[0]
            r["numpy_matvec_s"] = median(npbw.matvec_times(args.numpy_reps))
            r["numpy_gemm_s"] = median(npbw.gemm_times(batch, max(3, args.numpy_reps // 3)))
        other = "n/a" if r["other_cores"] is None else f"{r['other_cores']:.2f} cores"
        print(
            f"  batch {batch} round {len(rounds.rounds)}: jaxserve {r['jaxserve_full_s']:.3f}s/"
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
    used, which = rounds.selected()
    res: dict[str, Any] = {
        "batch": batch,
        "warmup_s": warm_s,
        "warmup_compiles": warm_compiles,
        "timed_loop_s": time.perf_counter() - t_loop,
        "compiles_during_timed_rounds": timed_compiles,
        "headline_rounds": which,
        **summarize(used, batch, n, step_bytes, npbw.nbytes),
        "all_rounds": summarize(rounds.rounds, batch, n, step_bytes, npbw.nbytes),
        "quiet_rounds": rounds.num_quiet,
        "round_data": rounds.rounds,
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


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
    args = parse_args(argv)
    t_start = time.perf_counter()
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

    report = save_report(
        args.out,
        flags=vars(args),
        results=results,
        packages=("torch", "transformers"),
        model={
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
        method=(
            "decode_s = median T(new_tokens) - median T(1) (prefill-only generation), "
            "new_tokens-1 decode steps, same for torch; medians over reps rounds that "
            "interleave jaxserve, torch and numpy; ratio_a = jaxserve/torch decode tok/s; "
            "ratio_b = weight_bytes_per_step * steps/s / numpy W@x bandwidth"
        ),
        compile_check=cc,
        runtime_s=time.perf_counter() - t_start,
        out=os.path.abspath(args.out),
    )
    print_report(report)
    return report


if __name__ == "__main__":
    main()
