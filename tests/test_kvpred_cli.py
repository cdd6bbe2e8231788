"""The KV Prediction command lines end to end: train_kvpred, eval_kvpred, and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxserve.config import PRESETS
from kvpred import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_train_kvpred_then_eval_every_variant_kind(tmp_path):
    work = tmp_path / "kvp"
    r = _run(
        "experiments.train_kvpred",
        "--base=tiny",
        "--aux=lp:0.5",
        "--steps=3",
        "--warmup_steps=1",
        "--batch_size=4",
        "--seq_len=32",
        "--log_every=1",
        "--checkpoint_every=2",
        f"--workdir={work}",
        "--kb_entities=8",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert (work / "final" / "kvp_config.json").is_file()
    out = tmp_path / "eval"
    variants = f"base,kvp_identity,lp_baseline:0.5,aux_only:tiny-aux,kvp:{work / 'final'}"
    r = _run(
        "experiments.eval_kvpred",
        "--base=tiny",
        f"--variants={variants}",
        "--task=synthetic_qa",
        "--kb_entities=8",
        "--limit=6",
        "--ttft_batch_sizes=1,2",
        "--ttft_reps=1",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    v = data["variants"]
    assert set(v) == set(variants.split(","))
    assert data["num_examples"] == 6 and (out / "pareto.png").stat().st_size > 0
    for name, row in v.items():
        assert len(row["predictions"]) == 6 and 0 <= row["exact_match"] <= 1, name
        assert set(row["ttft_seconds_by_batch"]) == {"1", "2"} and row["ttft_seconds"] > 0
        assert row["ttft_speedup"] > 0
        assert set(row["ttft_base_seconds_by_batch"]) == {"1", "2"}
        assert row["ttft_speedup_over_flops"]["1"] == pytest.approx(
            row["ttft_speedup"] / row["ttft_flops_reduction"]
        )
    # A = B with an identity predictor answers exactly like the base
    assert v["kvp_identity"]["agreement_with_base"] == 1.0
    assert [p["prediction"] for p in v["kvp_identity"]["predictions"]] == [
        p["prediction"] for p in v["base"]["predictions"]
    ]
    # FLOPs: the paper's formula, from the configs
    n = data["ttft_prompt_len"]
    tiny, aux = PRESETS["tiny"], PRESETS["tiny-aux"]
    assert v["base"]["ttft_flops"] == flops.prefill_flops(tiny, n)
    assert v["aux_only:tiny-aux"]["ttft_flops_reduction"] == pytest.approx(
        tiny.num_params() / aux.num_params()
    )
    assert v["base"]["ttft_flops_reduction"] == 1.0
    assert 1.0 < v[f"kvp:{work / 'final'}"]["ttft_flops_reduction"] < 2.0  # LP 0.5 + P + 1 tok
    assert set(v[f"kvp:{work / 'final'}"]["memory_bytes"]) == {"aux", "predictor"}
    # the synthetic set in TriviaQA's layout, read back by the TriviaQA task: same answers
    qa = out / "synthetic_qa.json"
    r = _run(
        "experiments.eval_kvpred",
        "--base=tiny",
        "--variants=base",
        f"--task=triviaqa:{qa}",
        "--ttft_batch_sizes=1",
        "--ttft_reps=1",
        f"--out={tmp_path / 'tqa'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "tqa" / "results.json").read_text())["variants"]["base"]
    assert [p["prediction"] for p in again["predictions"]] == [
        p["prediction"] for p in v["base"]["predictions"]
    ]


@pytest.mark.slow
def test_eval_on_the_code_task_scores_greedy_and_sampled_pass_at_k(tmp_path):
    out = tmp_path / "eval"
    args = ["--base=tiny", "--ttft_batch_sizes=1", "--ttft_reps=1", "--limit=3"]
    r = _run(
        "experiments.eval_kvpred",
        *args,
        "--variants=base,kvp_identity,lp_baseline:0.5",
        "--task=synthetic_code",
        "--samples=2",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    v = data["variants"]
    for name, row in v.items():
        assert row["metric"] == "pass@1" and 0 <= row["pass@1"] <= 1, name
        assert 0 <= row["sampled_pass@1"] <= row["sampled_pass@2"] <= 1, name
        assert [len(p["samples"]) for p in row["predictions"]] == [2, 2, 2]
        assert row["ttft_flops_per_prompt"] > 0 and row["ttft_seconds"] > 0
    assert v["kvp_identity"]["agreement_with_base"] == 1.0
    assert v["lp_baseline:0.5"]["ttft_flops_per_prompt_reduction"] > 1.0
    assert data["prompt_tokens_min"] <= data["ttft_prompt_len"] <= data["prompt_tokens_max"]
    # the problems it wrote are read back by humaneval:PATH: the same greedy completions
    r = _run(
        "experiments.eval_kvpred",
        *args,
        "--variants=base",
        f"--task=humaneval:{out / 'synthetic_code.jsonl'}",
        f"--out={tmp_path / 'again'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "results.json").read_text())["variants"]["base"]
    assert [p["completions"] for p in again["predictions"]] == [
        p["completions"] for p in v["base"]["predictions"]
    ]


def test_train_lm_init_from_continues_a_checkpoint(tmp_path):
    import jax
    import numpy as np
    from flax import nnx

    from jaxserve.models.checkpoint import load_model

    src = os.path.join(ROOT, "jaxserve", "assets", "models", "tiny-aux")
    r = _run(
        "experiments.train_lm",
        f"--init_from={src}",
        "--steps=2",
        "--lr=1e-7",
        "--warmup_steps=0",
        "--batch_size=2",
        "--seq_len=16",
        "--kb_entities=8",
        f"--workdir={tmp_path}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    before = jax.tree.leaves(nnx.state(load_model(src), nnx.Param))
    after = jax.tree.leaves(nnx.state(load_model(tmp_path / "final"), nnx.Param))
    assert [a.shape for a in after] == [b.shape for b in before]
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(after, before)]
    assert 0 < max(diffs) < 1e-4  # trained (two tiny steps) from the checkpoint's weights
    recorded = json.loads((tmp_path / "summary.json").read_text())["flags"]
    assert recorded["init_from"] == src and recorded["steps"] == 2  # own and shared flags


def test_plot_labels_drop_shared_directories():
    from kvpred.report import short_labels

    names = [
        "base",
        "lp_baseline:0.5",
        "aux_only:tiny-aux",
        "aux_only:runs/kb/lm_aux/final",
        "aux_only:runs/kb/kvp_c/final/aux",
        "kvp:runs/kb/kvp_c/final",
        "kvp:/abs/x/final",
    ]
    assert list(short_labels(names).values()) == [
        "base",
        "lp_baseline:0.5",
        "aux_only:tiny-aux",
        "aux_only:runs/kb/lm_aux",
        "aux_only:runs/kb/kvp_c/aux",
        "kvp:runs/kb/kvp_c",
        "kvp:abs/x",
    ]
    assert list(short_labels(names[3:6]).values()) == [
        "aux_only:lm_aux",
        "aux_only:kvp_c/aux",
        "kvp:kvp_c",
    ]
    assert short_labels(["kvp:runs/kb/kvp_c/final"]) == {"kvp:runs/kb/kvp_c/final": "kvp:kvp_c"}


@pytest.mark.parametrize(
    "module, args, flag",
    [
        ("experiments.eval_kvpred", ["--base=tiny", "--variants=base,oracle"], "oracle"),
        ("experiments.eval_kvpred", ["--base=tiny", "--variants=kvp:/no/such"], "/no/such"),
        ("experiments.eval_kvpred", ["--base=tiny", "--task=mmlu"], "--task"),
        (
            "experiments.eval_kvpred",
            ["--base=tiny", "--task=synthetic_code", "--samples=2", "--temperature=0"],
            "--temperature",
        ),
        ("experiments.eval_kvpred", ["--base=tiny", "--task=humaneval:/no/such.jsonl"], "such"),
        ("experiments.train_kvpred", ["--base=tiny", "--aux=lp:0.3"], "fraction"),
        ("experiments.train_kvpred", ["--base=tiny", "--aux=c:small"], "vocabulary"),
        ("experiments.train_kvpred", ["--base=tiny", "--layer_map=0,x"], "--layer_map"),
        ("experiments.train_kvpred", ["--base=tiny", "--predictor_init=zeros"], "predictor_init"),
        ("experiments.train_kvpred", ["--base=tiny", "--predicted_prefix=x"], "predicted_prefix"),
        ("experiments.train_lm", ["--model=huge"], "--model"),
        ("experiments.train_lm", ["--init_from=/no/such"], "--init_from"),
        ("experiments.train_lm", ["--init_from=/tmp", "--lp_from=/tmp"], "exclusive"),
        ("experiments.train_lm", ["--data=wikipedia:1"], "wikipedia"),
    ],
)
def test_cli_usage_errors(module, args, flag, tmp_path):
    extra = [f"--out={tmp_path}"] if module.endswith("eval_kvpred") else [f"--workdir={tmp_path}"]
    r = _run(module, *args, *extra)
    assert r.returncode != 0
    assert flag in r.stderr, r.stderr[-2000:]
