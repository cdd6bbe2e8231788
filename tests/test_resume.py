"""Safe resume: a workdir records its run's settings, refuses others unless told, keeps a
history; a torn metrics line is dropped; a damaged latest checkpoint falls back."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx
from test_cli_errors import damage_orbax

from jaxserve.errors import CheckpointError, RunSettingsError
from kvpred.train import (
    TrainConfig,
    Trainer,
    claim_workdir,
    lm_loss_fn,
    read_metrics,
    read_run,
)

SETTINGS = {"model": "tiny", "lr": 3e-3, "steps": 20, "seed": 0, "mesh": None}


def _fake_checkpoint(workdir, step: int) -> None:
    os.makedirs(os.path.join(workdir, "checkpoints", str(step)), exist_ok=True)


def test_a_workdir_refuses_other_settings_naming_each_with_both_values(tmp_path):
    w = str(tmp_path)
    claim_workdir(w, SETTINGS)
    claim_workdir(w, SETTINGS)  # nothing trained yet: a restart is fine
    _fake_checkpoint(w, 10)
    claim_workdir(w, SETTINGS)  # same settings: resume
    other = dict(SETTINGS, lr=1e-2, seed=7, steps=30)
    with pytest.raises(RunSettingsError) as e:
        claim_workdir(w, other)
    msg = str(e.value)
    assert "--lr: 0.003 then, 0.01 now" in msg and "--seed: 0 then, 7 now" in msg
    assert "--steps: 20 then, 30 now" in msg and "--model" not in msg
    assert "\n" not in msg
    assert [h["event"] for h in read_run(w)["history"]] == ["start", "restart", "resume"]


def test_force_resume_is_recorded_and_drops_the_stale_summary(tmp_path):
    w = str(tmp_path)
    claim_workdir(w, SETTINGS)
    _fake_checkpoint(w, 10)
    (tmp_path / "summary.json").write_text("{}")
    run = claim_workdir(w, dict(SETTINGS, lr=1e-2), resume="force")
    last = run["history"][-1]
    assert last["event"] == "resume_forced" and last["from_step"] == 10
    assert last["changed"] == {"lr": [3e-3, 1e-2]}
    assert run["settings"]["lr"] == 1e-2 and read_run(w) == run
    assert not (tmp_path / "summary.json").exists()  # it described the run before the change
    claim_workdir(w, dict(SETTINGS, lr=1e-2))  # the forced settings are now the run's


def test_overwrite_starts_over(tmp_path):
    w = str(tmp_path)
    claim_workdir(w, SETTINGS)
    _fake_checkpoint(w, 10)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "final").mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    run = claim_workdir(w, dict(SETTINGS, lr=1e-2), overwrite=True, outputs=("final",))
    assert [h["event"] for h in run["history"]] == ["overwrite"]
    assert sorted(os.listdir(w)) == ["keep.txt", "run.json"]


def test_checkpoints_without_a_record_need_force(tmp_path):
    _fake_checkpoint(str(tmp_path), 4)
    with pytest.raises(RunSettingsError, match="run.json"):
        claim_workdir(str(tmp_path), SETTINGS)
    (tmp_path / "run.json").write_text("[oops")
    with pytest.raises(CheckpointError, match="run.json"):
        claim_workdir(str(tmp_path), SETTINGS)


def _batch_at(step: int) -> dict:
    rng = np.random.default_rng(step)
    tokens = rng.integers(3, 97, (2, 9)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((2, 8), np.float32)}


def _trainer(workdir, steps: int) -> Trainer:
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2)
    model = random_model(tiny_config(), seed=1)
    return Trainer(model, nnx.Param, lm_loss_fn(), cfg, str(workdir))


def test_torn_metrics_line_is_dropped_and_a_damaged_checkpoint_falls_back(tmp_path, caplog):
    whole = _trainer(tmp_path / "a", 6)
    want = [r["loss"] for r in whole.run(_batch_at)]
    whole.close()

    first = _trainer(tmp_path / "b", 4)  # steps 1-4, checkpoints at 2 and 4
    first.run(_batch_at)
    first.close()
    # the latest checkpoint's data files are damaged; a kill tore the metrics' last line
    damage_orbax(tmp_path / "b" / "checkpoints" / "4")
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    again = _trainer(tmp_path / "b", 6)
    with caplog.at_level("WARNING"):
        again.run(_batch_at)
    again.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("checkpoint step 4" in m and "cannot be read" in m for m in warnings), warnings
    assert any("torn last line" in m for m in warnings), warnings
    got = read_metrics(str(tmp_path / "b"))
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]  # 3-4 retrained from step 2
    np.testing.assert_allclose([r["loss"] for r in got], want, rtol=1e-5)
    assert os.listdir(tmp_path / "b" / "checkpoints_damaged") == ["4"]


def test_no_readable_checkpoint_is_an_error_naming_the_step_and_moves_nothing(tmp_path):
    first = _trainer(tmp_path, 2)
    first.run(_batch_at)
    first.close()
    damage_orbax(tmp_path / "checkpoints" / "2")
    again = _trainer(tmp_path, 4)
    with pytest.raises(CheckpointError, match="step 2"):
        again.run(_batch_at)
    again.close()
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_a_bad_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match=r"metrics.jsonl:2"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    assert read_metrics(str(tmp_path)) == [{"step": 1}]
