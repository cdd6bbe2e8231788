"""Render the tables of docs/results.md from results files.

    python scripts/report.py RESULTS_JSON [RESULTS_JSON ...] [--out=FILE.md]

Every experiment and benchmark writes its flags, its environment and its results to one JSON
file; this prints, for each file, a Markdown section: the command that produced it, the file,
the machine, and the table. The kind of file is told from its content:

    experiments.serve        one row per scheduler (and rate), then the JCT ratios
    experiments.eval_kvpred  one row per variant: metric, TTFT FLOPs reduction, speedups
    scripts/bench_decode.py  one row per batch size: jaxserve and torch decode, the ratios
    scripts/bench_generate.py one row per preset, dtype and batch size
    scripts/bench_engine.py  engine decode over a bare loop, swap over numpy copy
    scripts/sim_policies.py  the JCT ratios per rate and their spread over traces

When several files of one kind are given (repeated runs), a last section gives the range of
each headline ratio over them, which is what docs/results.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from collections.abc import Callable

from jaxserve.metrics import jct_ratios


def command(doc: dict, kind: str) -> str:
    """The command line that wrote `doc`: recorded in its environment, else rebuilt from its
    flags (every flag with a value, so longer than what was typed)."""
    argv = doc.get("environment", {}).get("argv")
    if argv:
        script = argv[0]
        parts = script.replace(os.sep, "/").split("/")
        if "experiments" in parts[:-1]:
            head = ["python", "-m", f"experiments.{parts[-1].removesuffix('.py')}"]
        else:
            head = ["python", "/".join(parts[-2:]) if len(parts) > 1 else script]
        return shlex.join(head + list(argv[1:]))
    flags = doc.get("flags", {})
    args = [
        f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in flags.items()
        if v is not None and v is not False
    ]
    head = f"python -m {kind}" if kind.startswith("experiments.") else f"python {kind}"
    return f"{head} {' '.join(args)}  # rebuilt from the recorded flags"


def machine(doc: dict) -> str:
    env = doc.get("environment", {})
    if not env:
        return "environment not recorded"
    devices = env.get("devices") or env.get("jax_devices") or []
    backend = env.get("backend") or env.get("jax_backend")
    return (
        f"{backend} ({len(devices)} device{'s' if len(devices) != 1 else ''}, "
        f"{env.get('device_kind', '?')}), {env.get('cpu_count')} CPUs, jax {env.get('jax')}, "
        f"python {env.get('python')}"
    )


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def f(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


# ----------------------------------------------------------------------------- kinds


def serve(doc: dict) -> tuple[str, dict[str, float]]:
    rows, ratios, headline = [], [], {}
    rates = sorted({r["rate"] for r in doc["runs"]})
    for r in doc["runs"]:
        s = r["summary"]
        name = r["scheduler"] + (" + KV prediction" if r.get("prefill") == "kv_prediction" else "")
        rows.append(
            [
                name,
                f(r["rate"], "g"),
                f(s["mean_jct"], ".2f"),
                f(s["p99_jct"], ".2f"),
                f(s["mean_ttft"]),
                f(s["p99_tbt"]),
                f(s["throughput_tokens_per_s"], ".0f"),
                s["total_preemptions"],
            ]
        )
    for rate in rates:
        base = {
            r["scheduler"]: r["summary"]
            for r in doc["runs"]
            if r["rate"] == rate and r.get("prefill", "base") == "base"
        }
        for k, v in jct_ratios(base).items():
            label = k if len(rates) == 1 else f"{k} at {rate:g} req/s"
            headline[f"mean JCT {label}"] = v["mean"]
            ratios.append(f"{label} **{v['mean']:.2f}x** (p99 {v.get('p99', float('nan')):.2f}x)")
    text = table(
        [
            "scheduler",
            "rate",
            "mean JCT s",
            "p99 JCT s",
            "mean TTFT s",
            "p99 TBT s",
            "tok/s",
            "preemptions",
        ],
        rows,
    )
    if ratios:
        text += "\n\nMean JCT: " + ", ".join(ratios) + "."
    return text, headline


def eval_kvpred(doc: dict) -> tuple[str, dict[str, float]]:
    variants = doc["variants"]
    batches = list(next(iter(variants.values()))["ttft_speedup_by_batch"])
    rows = []
    for name, v in variants.items():
        sp = "/".join(f(v["ttft_speedup_by_batch"][b], ".2f") for b in batches)
        over = "/".join(f(v["ttft_speedup_over_flops"][b], ".2f") for b in batches)
        rows.append(
            [
                f"`{name}`",
                f(v[v["metric"]]),
                f"{v['ttft_flops_reduction']:.2f} ({v['ttft_flops_attention_reduction']:.2f})",
                sp,
                over,
            ]
        )
    metric = next(iter(variants.values()))["metric"]
    header = [
        f"variant ({doc['task']}, {doc['num_examples']} examples)",
        metric,
        "TTFT FLOPs red. (attention-aware)",
        f"speedup, batch {'/'.join(batches)}",
        "measured / FLOPs-predicted",
    ]
    text = table(header, rows) + (
        f"\n\nPrompt {doc['prompt_tokens_mean']} tokens on average; "
        f"TTFT timed at {doc['ttft_prompt_len']} tokens."
    )
    return text, {f"{metric} {n}": v[v["metric"]] for n, v in variants.items()}


def bench_decode(doc: dict) -> tuple[str, dict[str, float]]:
    rows, headline = [], {}
    for r in doc["results"]:
        j, t = r["jaxserve"], r["torch"]
        spread = r.get("ratio_a_rounds")
        rng = f" ({spread['min']:.2f}-{spread['max']:.2f})" if spread and spread["n"] else ""
        rows.append(
            [
                r["batch"],
                f"{j['decode_tok_s']:.0f} ({j['ms_per_step']:.2f} ms/step)",
                f"{t['decode_tok_s']:.0f}",
                f"**{r['ratio_a']:.2f}**{rng}",
                f"{j['ratio_b']:.2f} (torch {t['ratio_b']:.2f})",
                f"{r['rounds']} {r['headline_rounds']}",
            ]
        )
        headline[f"batch {r['batch']} jaxserve/torch"] = r["ratio_a"]
        headline[f"batch {r['batch']} bandwidth/numpy"] = j["ratio_b"]
    header = [
        "batch",
        "jaxserve tok/s",
        "torch tok/s",
        "jaxserve / torch (rounds' range)",
        "weight bandwidth / numpy matvec",
        "rounds used",
    ]
    return table(header, rows), headline


def bench_generate(doc: dict) -> tuple[str, dict[str, float]]:
    rows = [
        [
            r["preset"],
            r["dtype"],
            r["batch"],
            f(r["ms_per_step"]),
            f(r["decode_tok_s"], ".0f"),
            f(r["weight_GBps"], ".1f"),
            f(r["of_device_bandwidth"], ".2f"),
        ]
        for r in doc["results"]
    ]
    header = ["preset", "dtype", "batch", "ms/step", "tok/s", "weights GB/s", "of device bw"]
    text = table(header, rows)
    if "device_bandwidth_GBps" in doc:
        text += (
            f"\n\nDevice bandwidth (`x + 1` over 1 GiB): {doc['device_bandwidth_GBps']:.0f} GB/s."
        )
    headline = {
        f"{r['preset']} {r['dtype']} batch {r['batch']} ms/step": r["ms_per_step"]
        for r in doc["results"]
    }
    return text, headline


def bench_engine(doc: dict) -> tuple[str, dict[str, float]]:
    r = doc["results"]
    sw = r["swap"]
    rows = [
        [
            "engine decode / bare jitted loop",
            f"{r['engine_decode_tok_s']:.0f} / {r['bare_decode_tok_s']:.0f} tok/s",
            f"**{r['engine_over_bare']:.2f}**",
        ],
        [
            "without look-ahead",
            f"{r['engine_no_lookahead_tok_s']:.0f} tok/s",
            f"{r['engine_no_lookahead_over_bare']:.2f}",
        ],
        [
            f"swap round trip ({sw['mode']}) / numpy copy",
            f"{sw['swap_GBps']:.1f} / {sw['numpy_copy_GBps']:.1f} GB/s",
            f"**{sw['swap_over_numpy']:.2f}**",
        ],
    ]
    headline = {"engine/bare": r["engine_over_bare"], "swap/numpy": sw["swap_over_numpy"]}
    return table(["measure", "figures", "ratio"], rows), headline


def sim_policies(doc: dict) -> tuple[str, dict[str, float]]:
    rows, headline = [], {}
    for res in doc["results"]:
        for k, s in res["mean_jct_ratio_spread"].items():
            rows.append(
                [
                    f(res["rate"], "g"),
                    k,
                    f"{s['median']:.2f}x",
                    f"{s['min']:.2f}-{s['max']:.2f}x",
                    s["n"],
                ]
            )
            headline[f"{k} at {res['rate']:g}"] = s["median"]
    return table(["rate", "mean JCT ratio", "median", "range", "traces"], rows), headline


KINDS: list[tuple[str, Callable[[dict], bool], Callable]] = [
    ("experiments.serve", lambda d: "runs" in d and "profile" in d, serve),
    ("experiments.eval_kvpred", lambda d: "variants" in d, eval_kvpred),
    ("scripts/bench_decode.py", lambda d: "compile_check" in d, bench_decode),
    ("scripts/bench_generate.py", lambda d: "device_bandwidth_GBps" in d, bench_generate),
    (
        "scripts/bench_engine.py",
        lambda d: isinstance(d.get("results"), dict) and "engine_over_bare" in d["results"],
        bench_engine,
    ),
    (
        "scripts/sim_policies.py",
        lambda d: (
            isinstance(d.get("results"), list)
            and d["results"]
            and "mean_jct_ratio_spread" in d["results"][0]
        ),
        sim_policies,
    ),
]


def render(path: str) -> tuple[str, str, dict[str, float]]:
    """(kind, Markdown section, headline figures) of one results file."""
    with open(path) as fh:
        doc = json.load(fh)
    for kind, matches, fn in KINDS:
        if matches(doc):
            body, headline = fn(doc)
            section = (
                f"#### {kind}\n\n```bash\n{command(doc, kind)}\n```\n\nFrom `{path}`; "
                f"{machine(doc)}.\n\n{body}\n"
            )
            return kind, section, headline
    raise SystemExit(f"{path}: not a results file this script knows ({[k for k, _, _ in KINDS]})")


def ranges(by_kind: dict[str, list[dict[str, float]]]) -> str:
    """Each headline figure's range over the files of one kind (repeated runs)."""
    out = []
    for kind, runs in by_kind.items():
        if len(runs) < 2:
            continue
        keys = [k for k in runs[0] if all(k in r for r in runs)]
        rows = [
            [k, f"{min(r[k] for r in runs):.2f}-{max(r[k] for r in runs):.2f}", len(runs)]
            for k in keys
        ]
        out.append(
            f"#### {kind}: range over {len(runs)} runs\n\n"
            + table(["figure", "range", "runs"], rows)
            + "\n"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="results JSON files")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    sections, by_kind = [], {}
    for path in args.results:
        kind, section, headline = render(path)
        sections.append(section)
        by_kind.setdefault(kind, []).append(headline)
    text = "\n".join(sections)
    spread = ranges(by_kind)
    if spread:
        text += "\n" + spread
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return text


if __name__ == "__main__":
    main()
