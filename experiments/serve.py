"""Serve one trace with several schedulers on a real model and compare them.

    python -m experiments.serve --model=tiny --schedulers=fcfs,vllm,mlfq,skip_join_mlfq,srpt \
        --workload=sharegpt_synth --rate=4 --num_requests=64 --out=runs/serve
    python -m experiments.serve --checkpoint=DIR --workload=trace.jsonl --rates=1,2,4 --out=runs/x
    python -m experiments.serve --checkpoint=runs/lm_tiny/final \
        --prefill=kv_prediction:runs/kvp_c/final
    python -m experiments.serve --schedulers=vllm,vtc,fair_priority --workload=multiturn_synth \
        --rate=1 --num_requests=48 --out=runs/fair     # clients, weights, conversations
    bash scripts/launch_local.sh 2 -- python -m experiments.serve --mesh=model:4 ...
                     # across processes: one mesh, process 0 prints and writes (docs/distributed.md)
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import scheduler_flags
from jaxserve import cli, config, distributed, metrics, serve, sharding, workload
from jaxserve.sched.policies import POLICIES

_MODEL = flags.DEFINE_string("model", None, "Preset name (random weights): tiny, small, ...")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF-format or jaxserve checkpoint dir.")
# by default the policies FastServe compares (the fair ones are for multi-client traces, and
# `priority` for traces whose requests carry one)
_DEFAULT_SCHEDULERS = [p for p in POLICIES if p not in ("vtc", "fair_priority", "priority")]
_SCHEDULERS = flags.DEFINE_list(
    "schedulers", _DEFAULT_SCHEDULERS, f"Policies, from {list(POLICIES)}."
)
_WORKLOAD = flags.DEFINE_string(
    "workload",
    "sharegpt_synth",
    f"One of {workload.named_workloads()}, a trace .jsonl or a dataset .json.",
)
_RATE = flags.DEFINE_float("rate", 4.0, "Arrival rate, requests/s.")
_RATES = flags.DEFINE_list("rates", None, "Sweep these rates (overrides --rate).")
_N = flags.DEFINE_integer("num_requests", 64, "Requests per run.", lower_bound=1)
_SCALE = flags.DEFINE_float("scale", 0.25, "Multiply synthetic lengths (small CPU models).")
_OUT_SIGMA = flags.DEFINE_float(
    "output_sigma",
    None,
    "Lognormal sigma of sharegpt_synth output lengths (heavier tail if larger).",
)
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_len", 256, "Clip prompts.", lower_bound=1)
_MAX_OUTPUT = flags.DEFINE_integer("max_output_len", 256, "Clip outputs.", lower_bound=1)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "Requests per iteration.", lower_bound=1)
_KV_PAGES = flags.DEFINE_integer("kv_pages", 512, "Device KV pages (incl. the null page).")
_PREEMPTION = flags.DEFINE_enum(
    "preemption",
    "swap",
    ["swap", "recompute", "predict", "auto"],
    "Victims: swap to host, drop and recompute with the base, drop and re-predict the cache "
    "(needs --prefill=kv_prediction:CKPT; its base-prefill runs recompute), or auto (the "
    "cheapest by the profiled costs, prediction among them with KV prediction).",
)
_DECODE_STEPS = flags.DEFINE_integer(
    "decode_steps",
    16,
    "Most decode steps one device call runs when nothing can change meanwhile (a power of "
    "two; 1: one step per call).",
)
_HOST_MODE = flags.DEFINE_enum("host_mode", "auto", ["auto", "numpy", "pinned_host"], "Host tier.")
_SWITCH = flags.DEFINE_enum(
    "switch",
    "all",
    list(serve.SWITCHES),
    "Context-switch mechanisms (FastSwitch's ablation): baseline = one transfer per page, "
    "each swap waited for (vLLM); block_groups = one transfer per contiguous run of pages, "
    "waited for; async = block groups never waited for; all = the engine's own: one "
    "gathered transfer per swap, never waited for.",
)
_SLO_TTFT = flags.DEFINE_float("slo_ttft", None, "TTFT target, s.")
_SLO_TBT = flags.DEFINE_float("slo_tbt", None, "TBT target, s.")
_PROFILE = flags.DEFINE_string("profile", None, "Load a saved profile.json instead of profiling.")
_SEED = flags.DEFINE_integer("seed", 0, "Workload and weight seed.")
_PREFILL = flags.DEFINE_string(
    "prefill",
    "base",
    "base | kv_prediction:CKPT (each scheduler then runs twice on the trace: "
    "with the base's prefill and with KV prediction's, and TTFT is compared).",
)
_OUT = flags.DEFINE_string("out", "runs/serve", "Output directory.")
_MESH = flags.DEFINE_string(
    "mesh",
    None,
    "Device mesh, e.g. model:2 (default: one device; across processes, model over every "
    "device of every process; there the data axis must be 1).",
)

_ALL = (
    _MODEL,
    _CHECKPOINT,
    _SCHEDULERS,
    _WORKLOAD,
    _RATE,
    _RATES,
    _N,
    _SCALE,
    _OUT_SIGMA,
    _MAX_PROMPT,
    _MAX_OUTPUT,
    _MAX_BATCH,
    _KV_PAGES,
    _PREEMPTION,
    _HOST_MODE,
    _SWITCH,
    _DECODE_STEPS,
    *scheduler_flags.ALL,
    _SLO_TTFT,
    _SLO_TBT,
    _PROFILE,
    _SEED,
    _PREFILL,
    _OUT,
    _MESH,
)


# Flags that describe the requests rather than the engine: experiments.load takes these,
# experiments.server refuses them.
WORKLOAD_FLAGS = (
    "schedulers",
    "workload",
    "rate",
    "rates",
    "num_requests",
    "arrival",
    "cv",
    "scale",
    "output_sigma",
    "slo_ttft",
    "slo_tbt",
    "closed_loop",
    "out",
)


def check_model_flags() -> str | None:
    """Validate --model/--checkpoint; returns the preset name (None with --checkpoint)."""
    model = _MODEL.value if _MODEL.value or _CHECKPOINT.value else "tiny"
    if _MODEL.value and _CHECKPOINT.value:
        raise app.UsageError("give --model or --checkpoint, not both")
    if _CHECKPOINT.value and not os.path.isdir(_CHECKPOINT.value):
        raise app.UsageError(f"--checkpoint: directory {_CHECKPOINT.value!r} does not exist")
    if not _CHECKPOINT.value and model not in config.PRESETS:
        raise app.UsageError(f"--model: unknown {model!r}; one of {sorted(config.PRESETS)}")
    return None if _CHECKPOINT.value else model


def check_rates() -> list[float]:
    try:
        rates = [float(r) for r in _RATES.value] if _RATES.value else [_RATE.value]
    except ValueError:
        raise app.UsageError(f"--rates: {_RATES.value} are not numbers") from None
    if any(r <= 0 for r in rates):
        raise app.UsageError("--rate/--rates must be positive")
    return rates


def check_workload_flags() -> None:
    w = _WORKLOAD.value
    if w not in workload.named_workloads() and not os.path.isfile(w):
        raise app.UsageError(f"--workload: {w!r} is neither a synthetic workload nor a file")
    if _OUT_SIGMA.value is not None:
        if _OUT_SIGMA.value <= 0:
            raise app.UsageError("--output_sigma must be > 0")
        if w != "sharegpt_synth":
            raise app.UsageError(
                "--output_sigma applies to --workload=sharegpt_synth only (lognormal outputs)"
            )


def check_engine_flags() -> None:
    steps = _DECODE_STEPS.value
    if steps < 1 or steps & (steps - 1):
        raise app.UsageError(f"--decode_steps must be a power of two >= 1, got {steps}")
    if _KV_PAGES.value < 2:
        raise app.UsageError("--kv_pages must be >= 2 (page 0 is reserved)")
    if _PROFILE.value and not os.path.isfile(_PROFILE.value):
        raise app.UsageError(f"--profile: {_PROFILE.value!r} does not exist")
    scheduler_flags.check()
    if _MESH.value:
        try:
            sharding.parse_mesh(_MESH.value)
        except ValueError as e:
            raise app.UsageError(f"--mesh: {e}") from None
    try:
        serve.parse_prefill(_PREFILL.value)
        serve.check_preemption(_PREEMPTION.value, _PREFILL.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def settings_from_flags(schedulers: list[str], rates: list[float]) -> serve.ServeSettings:
    return serve.ServeSettings(
        schedulers=schedulers,
        workload=_WORKLOAD.value,
        rates=rates,
        num_requests=_N.value,
        max_batch=_MAX_BATCH.value,
        kv_pages=_KV_PAGES.value,
        preemption=_PREEMPTION.value,
        seed=_SEED.value,
        scale=_SCALE.value,
        output_sigma=_OUT_SIGMA.value,
        max_prompt_len=_MAX_PROMPT.value,
        max_output_len=_MAX_OUTPUT.value,
        host_mode=_HOST_MODE.value,
        switch=_SWITCH.value,
        slo_ttft=_SLO_TTFT.value,
        decode_steps=_DECODE_STEPS.value,
        slo_tbt=_SLO_TBT.value,
        prefill=_PREFILL.value,
        mesh=_MESH.value,
        **scheduler_flags.settings(),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    preset = check_model_flags()
    bad = [s for s in _SCHEDULERS.value if s not in POLICIES]
    if bad or not _SCHEDULERS.value:
        raise app.UsageError(f"--schedulers: unknown {bad}; choose from {list(POLICIES)}")
    rates = check_rates()
    check_workload_flags()
    check_engine_flags()
    settings = settings_from_flags(_SCHEDULERS.value, rates)
    results = serve.run_serve(
        settings,
        checkpoint=_CHECKPOINT.value,
        preset=preset,
        out_dir=_OUT.value,
        flag_values={h.name: h.value for h in _ALL},
        profile_path=_PROFILE.value,
        load_prefill_model=load_kvp,
    )
    if not distributed.is_main():
        return  # process 0 prints and writes
    for rate in rates:  # under the table: what the schedulers gain over each other
        runs = [r for r in results["runs"] if r["rate"] == rate and r["prefill"] == "base"]
        line = metrics.ratio_line({r["scheduler"]: r["summary"] for r in runs})
        if line:
            print(line if len(rates) == 1 else f"at {rate:g} req/s, {line}")
    print(f"results: {os.path.join(_OUT.value, 'results.json')}")


def load_kvp(directory: str, base):
    """--prefill=kv_prediction:DIR: the KV-prediction model around the served base."""
    from kvpred.io import load_kvp

    return load_kvp(directory, base=base)


if __name__ == "__main__":
    cli.run(main)
