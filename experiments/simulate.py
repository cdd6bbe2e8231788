"""Simulate schedulers at a scale this machine cannot run: the engine's own scheduler code,
an analytical cost model of named accelerators, tensor and pipeline parallelism.

    python -m experiments.simulate --hardware=a100-80g --num_devices=16 --model=gpt3-175b \
        --tp=8 --pp=2 --schedulers=fcfs,vllm,skip_join_mlfq,srpt --workload=sharegpt_synth \
        --rates=0.5,1,2 --num_requests=1000 --seed=0 --out=runs/sim_gpt3

Writes DIR/results.json (`experiments.serve`'s run schema: scheduler, rate, summary,
requests), DIR/jct_vs_rate.png (mean and P99 JCT against arrival rate) and
DIR/tail_vs_rate.png (P99 TTFT and TBT against it).
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import scheduler_flags
from jaxserve import cli, metrics, workload
from jaxserve.sched.config import PREEMPTION_MODES
from jaxserve.sched.policies import POLICIES
from jaxserve.sched.settings import SWITCHES
from jaxserve.sim.hardware import HARDWARE
from jaxserve.sim.shapes import MODELS

_HARDWARE = flags.DEFINE_string("hardware", "a100-80g", f"Accelerator, one of {list(HARDWARE)}.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 1, "Accelerators in all (tp x pp x replicas).")
_MODEL = flags.DEFINE_string("model", "llama-3-8b", f"{list(MODELS)} or an engine preset.")
_TP = flags.DEFINE_integer("tp", 1, "Tensor-parallel degree.")
_PP = flags.DEFINE_integer("pp", 1, "Pipeline stages.")
_MICRO = flags.DEFINE_integer("microbatches", None, "Pipeline micro-batches (default: pp).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Weights and compute dtype.")
_EFF_F = flags.DEFINE_float("flops_efficiency", 1.0, "Fraction of peak FLOP/s reached.")
_EFF_M = flags.DEFINE_float("bandwidth_efficiency", 1.0, "Fraction of HBM bandwidth reached.")
_SCHEDULERS = flags.DEFINE_list("schedulers", list(POLICIES), f"Policies, from {list(POLICIES)}.")
_WORKLOAD = flags.DEFINE_string(
    "workload", "sharegpt_synth", f"One of {workload.named_workloads()}, or a trace .jsonl."
)
_RATES = flags.DEFINE_list("rates", ["1"], "Arrival rates, requests/s.")
_N = flags.DEFINE_integer("num_requests", 500, "Requests per run.")
_SEED = flags.DEFINE_integer("seed", 0, "Workload seed.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiply synthetic lengths.")
_OUT_SIGMA = flags.DEFINE_float("output_sigma", None, "Lognormal sigma of synthetic outputs.")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_len", 1024, "Clip prompts.")
_MAX_OUTPUT = flags.DEFINE_integer("max_output_len", 1024, "Clip outputs (and requests' cap).")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 16, "Requests per iteration.")
_KV_PAGES = flags.DEFINE_integer("kv_pages", None, "KV pages (default: what the HBM holds).")
_PREEMPTION = flags.DEFINE_enum("preemption", "swap", list(PREEMPTION_MODES), "Victims.")
_SWITCH = flags.DEFINE_enum(
    "switch",
    None,
    list(SWITCHES),
    "Price context switches as the engine's --switch mode moves KV (per-page, per-run or one "
    "gathered copy; waited for or overlapped; multi-turn reuse), each copy with the "
    "accelerator's host-copy latency (default: one copy per swap, no reuse).",
)
_OUT = flags.DEFINE_string("out", "runs/simulate", "Output directory.")


def check_flags() -> list[float]:
    if _HARDWARE.value not in HARDWARE:
        raise app.UsageError(f"--hardware: unknown {_HARDWARE.value!r}; one of {list(HARDWARE)}")
    from jaxserve.config import PRESETS

    if _MODEL.value not in MODELS and _MODEL.value not in PRESETS:
        known = sorted(set(MODELS) | set(PRESETS))
        raise app.UsageError(f"--model: unknown {_MODEL.value!r}; one of {known}")
    bad = [s for s in _SCHEDULERS.value if s not in POLICIES]
    if bad or not _SCHEDULERS.value:
        raise app.UsageError(f"--schedulers: unknown {bad}; choose from {list(POLICIES)}")
    for flag in (_NUM_DEVICES, _TP, _PP, _N, _MAX_BATCH, _MAX_PROMPT, _MAX_OUTPUT):
        if flag.value < 1:
            raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
    if _MICRO.value is not None and _MICRO.value < 1:
        raise app.UsageError(f"--microbatches must be >= 1, got {_MICRO.value}")
    if _NUM_DEVICES.value % (_TP.value * _PP.value):
        raise app.UsageError(
            f"--num_devices={_NUM_DEVICES.value} is not a multiple of --tp x --pp = "
            f"{_TP.value * _PP.value}"
        )
    if _KV_PAGES.value is not None and _KV_PAGES.value < 2:
        raise app.UsageError("--kv_pages must be >= 2 (page 0 is reserved)")
    try:
        rates = [float(r) for r in _RATES.value]
    except ValueError:
        raise app.UsageError(f"--rates: {_RATES.value} are not numbers") from None
    if not rates or any(not r > 0 for r in rates):
        raise app.UsageError(f"--rates must be positive numbers, got {_RATES.value}")
    w = _WORKLOAD.value
    if w not in workload.named_workloads() and not os.path.isfile(w):
        raise app.UsageError(f"--workload: {w!r} is neither a synthetic workload nor a file")
    for flag in (_EFF_F, _EFF_M):
        if not 0 < flag.value <= 1:
            raise app.UsageError(f"--{flag.name} must be in (0, 1], got {flag.value}")
    if _OUT_SIGMA.value is not None and _OUT_SIGMA.value <= 0:
        raise app.UsageError("--output_sigma must be > 0")
    scheduler_flags.check()
    return rates


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rates = check_flags()
    from jaxserve.experiment import check_output_dir
    from jaxserve.sim.run import SimSettings, run_analytical

    check_output_dir(_OUT.value)
    settings = SimSettings(
        schedulers=_SCHEDULERS.value,
        workload=_WORKLOAD.value,
        rates=rates,
        num_requests=_N.value,
        seed=_SEED.value,
        scale=_SCALE.value,
        output_sigma=_OUT_SIGMA.value,
        max_prompt_len=_MAX_PROMPT.value,
        max_output_len=_MAX_OUTPUT.value,
        max_batch=_MAX_BATCH.value,
        kv_pages=_KV_PAGES.value,
        preemption=_PREEMPTION.value,
        switch=_SWITCH.value,
        **scheduler_flags.settings(),
    )
    results = run_analytical(
        settings,
        _HARDWARE.value,
        _MODEL.value,
        _NUM_DEVICES.value,
        _TP.value,
        _PP.value,
        _OUT.value,
        microbatches=_MICRO.value,
        dtype=_DTYPE.value,
        flops_efficiency=_EFF_F.value,
        bandwidth_efficiency=_EFF_M.value,
        flag_values={name: flags.FLAGS[name].value for name in flags.FLAGS if name in _OWN},
    )
    for rate in rates:
        runs = [r for r in results["runs"] if r["rate"] == rate]
        line = metrics.ratio_line({r["scheduler"]: r["summary"] for r in runs})
        if line:
            print(line if len(rates) == 1 else f"at {rate:g} req/s, {line}")
    print(f"results: {os.path.join(_OUT.value, 'results.json')}")


_OWN = {
    f.name
    for f in (
        _HARDWARE, _NUM_DEVICES, _MODEL, _TP, _PP, _MICRO, _DTYPE, _EFF_F, _EFF_M, _SCHEDULERS,
        _WORKLOAD, _RATES, _N, _SEED, _OUT_SIGMA, _SCALE, _MAX_PROMPT, _MAX_OUTPUT, _MAX_BATCH,
        _KV_PAGES, _PREEMPTION, _SWITCH, _OUT, *scheduler_flags.ALL,
    )
}  # fmt: skip

if __name__ == "__main__":
    cli.run(main)
