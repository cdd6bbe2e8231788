"""Bad inputs at every command line: each ends with exit status 1 or 2 and one line,
`error: ...`, naming the file, flag or field, and never a traceback.

The table runs each entry point's cases in one process (`cli_driver.py`, through the same
`jaxserve.cli` path as `python -m`); a few cases also run as real processes, and
`--verbosity=1` adds the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import random_model, tiny_config

from jaxserve.models import safetensors_io
from jaxserve.models.checkpoint import save_checkpoint
from jaxserve.models.weights import save_hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "cli_driver.py")


def damage_orbax(directory) -> None:
    """Overwrite the tensor data files of an orbax save (its metadata stays intact)."""
    for root, _, files in os.walk(directory):
        if os.sep + "d" in root:
            for name in files:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\x00garbage" * 8)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Damaged and wrong inputs: {name: path}."""
    d = tmp_path_factory.mktemp("bad")
    model = random_model(tiny_config())
    save_hf(model, d / "hf_ok")
    p = {"hf_ok": str(d / "hf_ok")}

    def hf_copy(name):
        shutil.copytree(d / "hf_ok", d / name)
        p[name] = str(d / name)
        return d / name

    (hf_copy("hf_badjson") / "config.json").write_text("{not json")
    (hf_copy("hf_mamba") / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    st = hf_copy("hf_truncated") / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    st = hf_copy("hf_missing") / "model.safetensors"
    tensors = {k: f.get(k) for f in [safetensors_io.SafetensorsFile(str(st))] for k in f.keys()}
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors_io.save_file(tensors, str(st))
    save_checkpoint(model, d / "native_badcfg")
    (d / "native_badcfg" / "jaxserve_config.json").write_text("{oops")
    p["native_badcfg"] = str(d / "native_badcfg")
    save_checkpoint(model, d / "native_damaged")
    damage_orbax(d / "native_damaged" / "params")
    p["native_damaged"] = str(d / "native_damaged")
    (d / "kvp_bad").mkdir()
    (d / "kvp_bad" / "kvp_config.json").write_text("{")
    p["kvp_bad"] = str(d / "kvp_bad")
    files = {
        "empty.jsonl": "\n",
        "notjson.jsonl": '{"arrival": 0, "prompt_len": 4, "output_len": 2}\n{arrival\n',
        "field.jsonl": '{"arrival": 0, "prompt_len": 4, "output_len": 2, "colour": 1}\n',
        "vocab.jsonl": '{"arrival": 0, "prompt_ids": [5, 999999], "output_len": 2}\n',
        "profile.json": '{"model": "x", "prefill": [[16, 0.1]',
        "trivia.json": "{not json",
        "a_file": "I am a file, not a directory\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
        p[name] = str(d / name)
    p["under_file"] = str(d / "a_file" / "out")
    # training workdirs: one made with other settings, one with checkpoints but no record
    (d / "other_run" / "checkpoints" / "2").mkdir(parents=True)
    (d / "other_run" / "run.json").write_text(
        json.dumps({"settings": {"lr": 0.5, "loss_kv": 7.0}, "history": []})
    )
    (d / "no_record" / "checkpoints" / "2").mkdir(parents=True)
    (d / "bad_record").mkdir()
    (d / "bad_record" / "run.json").write_text("[1, 2")
    for name in ("other_run", "no_record", "bad_record"):
        p[name] = str(d / name)
    p["tmp"] = str(d)
    return p


# (entry point, arguments with {placeholders} from `bad`, what the message must name)
CASES = [
    # generate
    ("generate", ["--checkpoint={hf_badjson}", "--prompt_ids=1"], "config.json"),
    ("generate", ["--checkpoint={hf_mamba}", "--prompt_ids=1"], "mamba"),
    ("generate", ["--checkpoint={hf_truncated}", "--prompt_ids=1"], "model.safetensors"),
    ("generate", ["--checkpoint={hf_missing}", "--prompt_ids=1"], "layers.1.mlp.up_proj"),
    ("generate", ["--checkpoint={native_badcfg}", "--prompt_ids=1"], "jaxserve_config.json"),
    ("generate", ["--checkpoint={native_damaged}", "--prompt_ids=1"], "params"),
    ("generate", ["--checkpoint=/no/such/dir", "--prompt_ids=1"], "/no/such/dir"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--output_json={under_file}"], "--output_json"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--output_json={tmp}"], "--output_json"),
    ("generate", ["--preset=tiny", "--prompt_ids=1,x"], "--prompt_ids"),
    ("generate", ["--preset=tiny", "--prompt_ids=1,999999"], "999999"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--top_p=2"], "--top_p"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--max_new_tokens=0"], "--max_new_tokens"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--stop_token_ids=a"], "--stop_token_ids"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--mesh=data:64"], "mesh"),
    ("generate", ["--preset=huge", "--prompt=hi"], "--preset"),
    ("generate", ["--preset=tiny"], "--prompt"),
    ("generate", ["--preset=tiny", "--checkpoint=/x", "--prompt=hi"], "--checkpoint"),
    ("generate", ["--preset=tiny", "--prompt=hi", "--colour=red"], "colour"),
    # serve
    ("serve", ["--workload={empty.jsonl}"], "empty.jsonl"),
    ("serve", ["--workload={notjson.jsonl}"], "notjson.jsonl:2"),
    ("serve", ["--workload={field.jsonl}"], "colour"),
    ("serve", ["--workload={vocab.jsonl}"], "999999"),
    ("serve", ["--workload=/no/such.jsonl"], "--workload"),
    ("serve", ["--profile={profile.json}"], "--profile"),
    ("serve", ["--out={under_file}"], "--out"),
    ("serve", ["--checkpoint={hf_badjson}"], "config.json"),
    ("serve", ["--checkpoint={native_damaged}"], "params"),
    ("serve", ["--prefill=kv_prediction:/no/such"], "--prefill"),
    ("serve", ["--prefill=fast"], "--prefill"),
    ("serve", ["--prefill=kv_prediction:{kvp_bad}"], "kvp_config.json"),
    ("serve", ["--schedulers=fcfs,lottery"], "--schedulers"),
    ("serve", ["--rates=1,x"], "--rates"),
    ("serve", ["--kv_pages=1"], "--kv_pages"),
    ("serve", ["--decode_steps=3"], "--decode_steps"),
    ("serve", ["--page_size=0"], "--page_size"),
    ("serve", ["--q0_iterations=0"], "--q0_iterations must be a finite number > 0"),
    ("serve", ["--arrival=gamma", "--cv=0"], "--cv must be > 0"),
    ("serve", ["--rerank_margin=inf"], "--rerank_margin must be finite"),
    ("serve", ["--num_requests=0"], "--num_requests"),
    ("serve", ["--model=huge"], "--model"),
    # train_lm
    ("train_lm", ["--workdir={other_run}", "--lr=0.01"], "--lr"),
    ("train_lm", ["--workdir={no_record}"], "run.json"),
    ("train_lm", ["--workdir={bad_record}"], "run.json"),
    ("train_lm", ["--workdir={under_file}"], "--workdir"),
    ("train_lm", ["--workdir={tmp}/w1", "--export={under_file}"], "--export"),
    ("train_lm", ["--workdir={tmp}/w1", "--init_from={native_badcfg}"], "jaxserve_config.json"),
    ("train_lm", ["--workdir={tmp}/w1", "--init_from={hf_truncated}"], "model.safetensors"),
    ("train_lm", ["--workdir={tmp}/w1", "--lp_from={hf_mamba}"], "mamba"),
    ("train_lm", ["--workdir={tmp}/w1", "--model=huge"], "--model"),
    ("train_lm", ["--workdir={tmp}/w1", "--steps=0"], "--steps"),
    ("train_lm", ["--workdir={tmp}/w1", "--lr=0"], "--lr"),
    ("train_lm", ["--workdir={tmp}/w1", "--steps=5", "--warmup_steps=9"], "--warmup_steps"),
    ("train_lm", ["--workdir={tmp}/w1", "--data=wikipedia:1"], "wikipedia"),
    ("train_lm", ["--workdir={tmp}/w1", "--data=synthetic_qa:-1"], "synthetic_qa"),
    ("train_lm", ["--workdir={tmp}/w1", "--mesh=data:64"], "mesh"),
    ("train_lm", ["--workdir={tmp}/w1", "--resume=maybe"], "--resume"),
    ("train_lm", [], "--workdir"),
    # train_kvpred
    ("train_kvpred", ["--workdir={other_run}", "--base=tiny"], "--loss_kv"),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base=/no/such"], "/no/such"),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base={hf_badjson}"], "config.json"),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base=tiny", "--aux=lp:0.3"], "fraction"),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base=tiny", "--aux=c:{hf_missing}"], "vocabulary"),
    (
        "train_kvpred",
        ["--workdir={tmp}/w4", "--base={hf_ok}", "--aux=c:{hf_missing}"],
        "layers.1.mlp.up_proj",
    ),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base=tiny", "--aux=c:/no/such"], "/no/such"),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base=tiny", "--layer_map=0,x"], "--layer_map"),
    ("train_kvpred", ["--workdir={tmp}/w2", "--base=tiny", "--loss_kv=-1"], "--loss_kv"),
    (
        "train_kvpred",
        ["--workdir={tmp}/w2", "--base=tiny", "--kv_loss_reduce=max"],
        "--kv_loss_reduce",
    ),
    ("train_kvpred", ["--workdir={under_file}", "--base=tiny"], "--workdir"),
    ("train_kvpred", ["--workdir={tmp}/w2"], "--base"),
    # eval_kvpred
    ("eval_kvpred", ["--base=tiny", "--variants=base,aux_only:/nonexistent"], "/nonexistent"),
    ("eval_kvpred", ["--base=tiny", "--variants=base,kvp:{kvp_bad}"], "kvp_config.json"),
    ("eval_kvpred", ["--base=tiny", "--variants=base,aux_only:{hf_badjson}"], "config.json"),
    ("eval_kvpred", ["--base=tiny", "--variants=base,oracle"], "oracle"),
    ("eval_kvpred", ["--base=tiny", "--variants=base,base"], "repeat"),
    ("eval_kvpred", ["--base=tiny", "--task=mmlu"], "--task"),
    ("eval_kvpred", ["--base=tiny", "--task=triviaqa:/no/such.json"], "/no/such.json"),
    ("eval_kvpred", ["--base=tiny", "--task=triviaqa:{trivia.json}"], "trivia.json"),
    ("eval_kvpred", ["--base=tiny", "--ttft_batch_sizes=0"], "--ttft_batch_sizes"),
    ("eval_kvpred", ["--base=huge"], "huge"),
    ("eval_kvpred", ["--base={native_damaged}"], "params"),
]


def _expand(args, bad) -> list[str]:
    out = []
    for a in args:
        for key, path in bad.items():
            a = a.replace("{" + key + "}", path)
        out.append(a)
    return out


def _default_out(module, bad) -> list[str]:
    if module in ("serve", "eval_kvpred"):
        return [f"--out={bad['tmp']}/out_{module}"]
    return []


@pytest.fixture(scope="module")
def outcomes(bad):
    """{case index: {"status", "stderr"}}: each entry point's cases in one process."""
    out = {}
    for module in dict.fromkeys(m for m, _, _ in CASES):
        idx = [i for i, (m, _, _) in enumerate(CASES) if m == module]
        argvs = []
        for i in idx:
            args = _expand(CASES[i][1], bad)
            if not any(a.startswith("--out=") for a in args):
                args += _default_out(module, bad)
            argvs.append(args)
        r = subprocess.run(
            [sys.executable, DRIVER, f"experiments.{module}"],
            cwd=ROOT,
            input=json.dumps(argvs),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        out.update(zip(idx, json.loads(r.stdout)))
    return out


def _check(status: int, stderr: str, culprit: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert status in (1, 2), (status, stderr[-2000:])
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, stderr[-2000:]
    assert culprit in lines[0], lines[0]
    assert stderr.rstrip().endswith(lines[0]), "the error is the last line"


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{m}:{c}" for m, _, c in CASES])
def test_bad_input_ends_with_one_line_naming_it(i, outcomes):
    module, args, culprit = CASES[i]
    _check(outcomes[i]["status"], outcomes[i]["stderr"], culprit)


@functools.cache
def _python_m(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_real_processes_exit_with_one_line_and_verbosity_adds_the_traceback(bad):
    r = _python_m("serve", f"--workload={bad['empty.jsonl']}", f"--out={bad['tmp']}/o")
    _check(r.returncode, r.stderr, "empty.jsonl")
    assert r.returncode == 1 and "scheduler" not in r.stdout  # nothing ran, not even a header
    r = _python_m("train_lm", "--steps=0", f"--workdir={bad['tmp']}/w3")
    _check(r.returncode, r.stderr, "--steps")
    assert r.returncode == 2
    r = _python_m(
        "generate", f"--checkpoint={bad['hf_badjson']}", "--prompt_ids=1", "--verbosity=1"
    )
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_the_python_api_raises_typed_errors(bad):
    from jaxserve.errors import CheckpointError, InputError
    from jaxserve.models.checkpoint import load_model
    from jaxserve.serve import load_profile
    from jaxserve.workload import WorkloadError, read_trace
    from kvpred.io import load_kvp

    for name in (
        "hf_badjson",
        "hf_mamba",
        "hf_truncated",
        "hf_missing",
        "native_badcfg",
        "native_damaged",
    ):
        with pytest.raises(CheckpointError, match=os.path.basename(bad[name])):
            load_model(bad[name])
    with pytest.raises(CheckpointError, match="kvp_config.json"):
        load_kvp(bad["kvp_bad"])
    with pytest.raises(WorkloadError, match="notjson.jsonl:2"):
        read_trace(bad["notjson.jsonl"])
    with pytest.raises(InputError, match="profile.json"):
        load_profile(bad["profile.json"])
    assert issubclass(WorkloadError, InputError) and issubclass(CheckpointError, ValueError)
