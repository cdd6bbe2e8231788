"""The real-checkpoint recipe (scripts/kvpred_hf_recipe.sh) end to end on randomly initialised
HF-format checkpoints of the architectures it is meant for, written to a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import random_model, save_openelm_hf, tiny_config

from jaxserve.models.weights import load_hf, save_hf
from jaxserve.tokenizer import load_default
from kvpred.io import tokenizer_for
from kvpred.tasks import write_triviaqa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "jaxserve", "assets", "tokenizer.json")
VOCAB = 4096  # the tokenizer copied next to the weights


def _configs(arch: str):
    """A 4-layer base and a 2-layer, narrower C auxiliary of one architecture."""
    common = dict(vocab_size=VOCAB, max_seq_len=512, head_dim=16)
    if arch == "qwen2":
        kw = dict(architecture="qwen2", qkv_bias=True, rms_eps=1e-6, **common)
        return (
            tiny_config(name="base", d_model=64, num_layers=4, ffn_dim=128, **kw),
            tiny_config(
                name="aux", d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, ffn_dim=64, **kw
            ),
        )
    kw = dict(architecture="openelm", qk_norm=True, rms_eps=1e-6, **common)
    return (
        tiny_config(
            name="base",
            d_model=64,
            num_layers=4,
            num_heads=(2, 2, 4, 4),
            num_kv_heads=(1, 1, 2, 2),
            ffn_dim=[64, 96, 128, 128],
            **kw,
        ),
        tiny_config(
            name="aux",
            d_model=32,
            num_layers=2,
            num_heads=(2, 2),
            num_kv_heads=(1, 1),
            ffn_dim=[32, 64],
            **kw,
        ),
    )


def _write_hf(model, path) -> str:
    if model.config.architecture == "openelm":
        save_openelm_hf(model, path)
    else:
        save_hf(model, path)
    shutil.copy(TOKENIZER, os.path.join(path, "tokenizer.json"))
    # the special tokens as the real ones name them: Qwen2 has no BOS, Llama's (OpenELM's) no pad
    special = (
        {"eos_token": "<|eos|>", "pad_token": "<|pad|>"}
        if model.config.architecture == "qwen2"
        else {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    )
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(special, f)
    loaded = load_hf(path)  # what was written is what the recipe will read
    assert loaded.config == model.config
    return str(path)


def test_training_and_evaluation_use_an_hf_checkpoints_own_tokenizer(tmp_path):
    own = tmp_path / "hf"
    own.mkdir()
    shutil.copy(TOKENIZER, own / "tokenizer.json")
    (own / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<pad>"}))
    tok = tokenizer_for(str(own))
    default = load_default()
    assert tok.eos_id != default.eos_id  # read from the directory, not the default
    assert tokenizer_for(str(tmp_path)).eos_id == default.eos_id  # none there: the default
    assert tokenizer_for("tiny").eos_id == default.eos_id


def test_training_streams_take_tokenizers_without_bos_or_pad(tmp_path):
    from kvpred.data import TokenStream

    for special, head in (({"eos_token": "<|eos|>"}, []), ({"bos_token": "<|bos|>"}, None)):
        d = tmp_path / str(len(os.listdir(tmp_path)))
        d.mkdir()
        shutil.copy(TOKENIZER, d / "tokenizer.json")
        (d / "tokenizer_config.json").write_text(json.dumps(special))
        tok = tokenizer_for(str(d))
        if head is None:  # no EOS: documents cannot end
            with pytest.raises(ValueError, match="EOS"):
                TokenStream(tok, {"a": ["x"]})
            continue
        assert tok.bos_id is None and tok.pad_id is None
        stream = TokenStream(tok, {"a": ["hello world"]}, seq_len=16, batch_size=1)
        doc = tok.encode("hello world")
        row = stream.batch(0)["tokens"][0].tolist()
        assert row[: len(doc) + 1] == [*doc, tok.eos_id]  # no BOS in front
        assert set(row[len(row) - (len(row) % (len(doc) + 1)) :]) <= {tok.eos_id}  # EOS pads


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "openelm"])
def test_recipe_runs_end_to_end_on_random_hf_checkpoints(tmp_path, arch):
    base_cfg, aux_cfg = _configs(arch)
    base = _write_hf(random_model(base_cfg, seed=0, std=0.05), tmp_path / "base")
    aux = _write_hf(random_model(aux_cfg, seed=1, std=0.05), tmp_path / "aux")
    from kvpred.data import KnowledgeBase

    qa = tmp_path / "tqa.json"
    write_triviaqa(KnowledgeBase(8).qa_examples("eval")[:3], qa)
    runs = tmp_path / "runs"
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        LP_FRACTIONS="0.5",
        TRAIN_FLAGS="--batch_size=2 --seq_len=32 --kb_entities=8 --log_every=1",
        EVAL_FLAGS="--limit=2 --samples=2 --ttft_batch_sizes=1 --ttft_reps=1 --kb_entities=8",
    )
    r = subprocess.run(
        ["bash", "scripts/kvpred_hf_recipe.sh", base, aux, str(runs), "2", str(qa)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    want = {
        "base",
        f"aux_only:{aux}",
        f"lp_baseline:{runs}/lp_0.5/final",
        f"kvp:{runs}/kvp_lp_0.5/final",
        f"kvp:{runs}/kvp_c/final",
        f"aux_only:{runs}/aux_more/final",
    }
    for task, metric in (("humaneval", "pass@1"), ("triviaqa", "exact_match")):
        data = json.loads((runs / f"eval_{task}" / "results.json").read_text())
        assert set(data["variants"]) == want and data["num_examples"] == (
            2 if task == "humaneval" else 2
        )
        for name, row in data["variants"].items():
            assert 0 <= row[metric] <= 1 and row["ttft_seconds"] > 0, name
            if task == "humaneval":
                assert "sampled_pass@2" in row, name
        assert data["variants"][f"kvp:{runs}/kvp_c/final"]["ttft_flops_reduction"] > 1
    meta = json.loads((runs / "kvp_c" / "final" / "kvp_config.json").read_text())
    assert meta["base"] == base and meta["aux_kind"] == "c"
