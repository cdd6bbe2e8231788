"""Evaluate KV prediction against its baselines: task accuracy against TTFT FLOPs and seconds.

    python -m experiments.eval_kvpred --base=runs/lm_tiny/final \
        --variants=base,aux_only:runs/lm_tiny_aux/final,lp_baseline:runs/lp_tiny/final,\
kvp:runs/kvp_c/final,kvp:runs/kvp_lp/final,kvp_identity \
        --task=synthetic_qa --out=runs/eval_qa

Writes OUT/results.json (flags, environment, and per variant: the task metric, ttft_flops and
its reduction against the base (the paper's parameter formula, plus the attention-aware count),
measured warm TTFT at each --ttft_batch_sizes and its speedup, parameter memory, and every
prediction) and OUT/pareto.png (accuracy against TTFT FLOPs reduction and measured speedup).
With --task=synthetic_qa the question set is also written in TriviaQA's official layout,
OUT/synthetic_qa.json, which --task=triviaqa:OUT/synthetic_qa.json reads back; with
--task=synthetic_code the held-out problems go to OUT/synthetic_code.jsonl, which
--task=humaneval:OUT/synthetic_code.jsonl reads back. Code tasks score greedy pass@1, and with
--samples=N also the unbiased sampled_pass@k of N completions at --temperature (0.8).
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags, logging

from jaxserve import cli, distributed, experiment, sharding
from jaxserve.errors import InputError
from kvpred import evaluate as ev
from kvpred import recipes, report, tasks
from kvpred.io import load_base, tokenizer_for

_BASE = flags.DEFINE_string(
    "base", None, "Base model: checkpoint directory or preset.", required=True
)
_VARIANTS = flags.DEFINE_string("variants", "base,kvp_identity", "Comma-separated variants.")
_TASK = flags.DEFINE_string("task", "synthetic_qa", " | ".join(tasks.task_specs()))
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate the first N examples only.", lower_bound=1)
_SAMPLES = flags.DEFINE_integer(
    "samples",
    0,
    "pass@k tasks: sampled completions per problem at --temperature, for the unbiased "
    "sampled_pass@k next to greedy pass@1 (0: greedy only).",
    lower_bound=0,
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.8, "pass@k tasks: the sampled completions' temperature (> 0)."
)
_KB_ENTITIES = flags.DEFINE_integer(
    "kb_entities", recipes.DEFAULT_KB_ENTITIES, "Synthetic QA entities.", lower_bound=4
)
_KB_SEED = flags.DEFINE_integer("kb_seed", 0, "Synthetic QA seed (as in training).")
_TTFT_BATCHES = flags.DEFINE_list("ttft_batch_sizes", ["1", "8"], "Batch sizes to time TTFT at.")
_TTFT_LEN = flags.DEFINE_integer(
    "ttft_prompt_len",
    None,
    "Prompt length to time TTFT at (default: the task's mean prompt).",
    lower_bound=2,
)
_TTFT_REPS = flags.DEFINE_integer("ttft_reps", 7, "Timed repetitions (median).", lower_bound=1)
_MESH = flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2 (default: 1 device).")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)


def _task(spec: str, limit: int | None):
    if _SAMPLES.value and not _TEMPERATURE.value > 0:
        raise ValueError(f"--temperature must be > 0 to sample, not {_TEMPERATURE.value}")
    options = tasks.TaskOptions(
        _KB_ENTITIES.value, _KB_SEED.value, _SAMPLES.value, _TEMPERATURE.value
    )
    task = tasks.make_task(spec, options)
    return task, task.load(limit)


def check_variants(variants: list[tuple[str, str, str]], base_config) -> None:
    """Resolve every variant's configs (no weights) before any is evaluated: a missing or
    damaged checkpoint, a KV predictor trained for another base, or another vocabulary stops
    the run at once with an `InputError` naming the variant."""
    from jaxserve.config import PRESETS
    from jaxserve.models.checkpoint import config_from_dict, read_config
    from kvpred.io import read_kvp_config

    for name, kind, arg in variants:
        try:
            if kind == "aux_only":
                config = PRESETS[arg] if arg in PRESETS else read_config(arg)
            elif kind == "lp_baseline" and os.path.isdir(arg):
                config = read_config(arg)
            elif kind == "kvp":
                meta = read_kvp_config(arg)
                if config_from_dict(meta["base_config"]) != base_config:
                    raise InputError(
                        f"its predictor was trained for base {meta['base']!r}, not this --base"
                    )
                config = read_config(os.path.join(arg, "aux"))
            else:
                continue
        except (OSError, ValueError) as e:
            raise InputError(f"--variants: {name!r}: {e}") from None
        if config.vocab_size != base_config.vocab_size:
            raise InputError(f"--variants: {name!r}: its vocabulary differs from the base's")


def _answer(pred: dict):
    return pred.get("prediction", pred.get("completions"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.single_process_only("experiments.eval_kvpred")
    try:
        variants = report.parse_variants(_VARIANTS.value)
        batches = [int(b) for b in _TTFT_BATCHES.value]
        if min(batches) < 1:
            raise ValueError("--ttft_batch_sizes must be positive integers")
        mesh = sharding.make_mesh(_MESH.value) if _MESH.value else None
        experiment.check_output_dir(_OUT.value, "--out")
        task, data = _task(_TASK.value, _LIMIT.value)
        base = load_base(_BASE.value)
        check_variants(variants, base.config)
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    tokenizer = tokenizer_for(_BASE.value)
    lengths = [len(tokenizer.encode(p)) + 1 for p in task.prompts(data)]  # the model's inputs
    n = round(statistics.mean(lengths))
    os.makedirs(_OUT.value, exist_ok=True)
    task.write_extras(data, _OUT.value)  # synthetic_qa: the set in TriviaQA's layout
    ttft_len = _TTFT_LEN.value or n
    results, base_row, base_timers = {}, None, {}
    for name, kind, arg in variants:
        v = report.build_variant(name, kind, arg, base, ttft_len)
        t0 = time.perf_counter()
        metric, metric_name, preds = report.run_task(v, task, tokenizer, data)
        eval_s = time.perf_counter() - t0
        # timed in turn with the base, rep by rep: the speedup is a ratio taken in one run
        paired = {}
        for b in batches:
            if b not in base_timers:  # one warm base runner per batch size, for every variant
                base_timers[b] = ev.TTFTTimer(base, b, ttft_len, mesh=mesh)
            timer = ev.TTFTTimer(v.model, b, ttft_len, mesh=mesh)
            paired[b] = ev.time_interleaved([base_timers[b], timer], _TTFT_REPS.value)
        ttft = {b: t for b, (_, t) in paired.items()}
        row = {
            "kind": kind,
            metric_name: metric,
            "metric": metric_name,
            **task.extra_metrics(preds),  # e.g. sampled_pass@k
            "ttft_flops": v.flops_params,
            "ttft_flops_attention": v.flops_attention,
            # averaged over every example's own prompt length, not taken at the mean
            "ttft_flops_per_prompt": report.mean_flops(v, base, lengths, "params"),
            "ttft_flops_attention_per_prompt": report.mean_flops(v, base, lengths, "attention"),
            "ttft_seconds": ttft[batches[0]],
            "ttft_seconds_by_batch": ttft,
            "ttft_base_seconds_by_batch": {b: t for b, (t, _) in paired.items()},
            "memory_bytes": v.memory_bytes,
            "eval_seconds": eval_s,
            "predictions": preds,
        }
        if kind == "base":
            base_row = row
        results[name] = row
        logging.info("%s: %s %.4f, TTFT %.2f ms", name, metric_name, metric, 1e3 * ttft[batches[0]])
    if base_row is None:  # reductions are against the base: measure it even when not listed
        v = report.build_variant("base", "base", "", base, ttft_len)
        base_row = {
            "ttft_flops": v.flops_params,
            "ttft_flops_attention": v.flops_attention,
            "ttft_flops_per_prompt": report.mean_flops(v, base, lengths, "params"),
        }
    base_preds = base_row.get("predictions")
    for row in results.values():
        if base_preds is not None:  # kvp_identity must agree on every example
            same = [_answer(a) == _answer(b) for a, b in zip(row["predictions"], base_preds)]
            row["agreement_with_base"] = sum(same) / len(same)
        row["ttft_flops_reduction"] = base_row["ttft_flops"] / row["ttft_flops"]
        row["ttft_flops_attention_reduction"] = (
            base_row["ttft_flops_attention"] / row["ttft_flops_attention"]
        )
        row["ttft_flops_per_prompt_reduction"] = (
            base_row["ttft_flops_per_prompt"] / row["ttft_flops_per_prompt"]
        )
        row["ttft_speedup_by_batch"] = {
            b: row["ttft_base_seconds_by_batch"][b] / row["ttft_seconds_by_batch"][b]
            for b in batches
        }
        row["ttft_speedup"] = row["ttft_speedup_by_batch"][batches[0]]
        # measured against FLOPs-predicted speedup (the paper's M2 CPU figure: 1.76 / 2.36)
        row["ttft_speedup_over_flops"] = {
            b: sp / row["ttft_flops_reduction"] for b, sp in row["ttft_speedup_by_batch"].items()
        }
    table = report.format_table(results)
    print(table)
    payload = {
        "flags": {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__name__)},
        "environment": experiment.environment(),
        "task": _TASK.value,
        "num_examples": len(data),
        "prompt_tokens_mean": n,
        "prompt_tokens_min": min(lengths),
        "prompt_tokens_max": max(lengths),
        "ttft_prompt_len": ttft_len,
        "variants": results,
    }
    experiment.write_json(os.path.join(_OUT.value, "results.json"), payload)
    report.pareto_plot(results, os.path.join(_OUT.value, "pareto.png"), _TASK.value)
    print(f"wrote {os.path.join(_OUT.value, 'results.json')} and pareto.png")


if __name__ == "__main__":
    cli.run(main)
