"""The figures and the printed report of `scripts/bench_decode.py` (see its docstring for the
method): medians over the rounds used, the ratios, and their spread round by round."""

from __future__ import annotations

from typing import Any

from jaxserve.bench import fmt_spread, median, spread


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
    # the same ratios round by round (each from one round's times): their spread
    steps = n - 1
    for name in ("jaxserve", "torch"):
        per_round = [
            step_bytes
            * steps
            / (r[name + "_full_s"] - r[name + "_prefill_s"])
            / (np_bytes / r["numpy_matvec_s"])
            for r in rounds
            if r[name + "_full_s"] > r[name + "_prefill_s"]
        ]
        out[name]["ratio_b_rounds"] = spread(per_round)
    out["ratio_a_rounds"] = spread(
        [
            (r["torch_full_s"] - r["torch_prefill_s"])
            / (r["jaxserve_full_s"] - r["jaxserve_prefill_s"])
            for r in rounds
            if r["jaxserve_full_s"] > r["jaxserve_prefill_s"]
        ]
    )
    out["ratio_a"] = out["jaxserve"]["decode_tok_s"] / out["torch"]["decode_tok_s"]
    out["ratio_a_best"] = out["torch"]["ms_per_step_best"] / out["jaxserve"]["ms_per_step_best"]
    return out


def print_report(report: dict) -> None:
    env, m, a = report["environment"], report["model"], report["flags"]
    print()
    print("=" * 100)
    print(
        f"device: jax {env['backend']} {env['devices']}; cpu_count {env['cpu_count']} "
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
    print(
        f"decode time = median T({a['new_tokens']} new) - median T(1 new) [prefill only]; "
        f"{a['new_tokens'] - 1} decode steps; same method for torch"
    )
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
        loads = [
            "n/a" if d["other_cores"] is None else f"{d['other_cores']:.2f}"
            for d in r["round_data"]
        ]
        print(
            f"{'':>5} {'rounds':<9} {r['rounds']} of {len(loads)} used ({r['headline_rounds']}); "
            "other processes' CPU per round: " + " ".join(loads) + " cores"
        )
        print(
            f"{'':>5} {'spread':<9} per round, the rounds used: ratio (a) "
            f"{fmt_spread(r['ratio_a_rounds'])}, ratio (b) jaxserve "
            f"{fmt_spread(r['jaxserve']['ratio_b_rounds'])}, torch "
            f"{fmt_spread(r['torch']['ratio_b_rounds'])}"
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
        ((b, v),) = cc["compiles_switching_back_to_batch"].items()
        print(f"  same Generator, back to batch {b} after the other sizes: {v} compilations")
    print(f"total runtime {report['runtime_s']:.1f} s; JSON: {report['out']}")
    print("=" * 100)
