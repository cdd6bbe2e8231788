"""Multi-process runs on jax.distributed: start-up flags, training over 2 CPU processes, failure.

The multi-process tests launch this file as a worker through `scripts/launch_local.sh 2`
(2 processes x 2 simulated CPU devices, gloo collectives, an ephemeral port), each bounded by a
timeout that kills the whole process group.

Training: a 4-step run of a tiny LM with a global batch of 8 rows on `--mesh=data:4`. Process
1 dies (os._exit) when step 3's batch is asked for, after the step-2 checkpoint: process 0,
blocked in step 3's all-reduce, must stop with one line naming itself and the dead peer
within the watchdog's patience (half of --distributed_timeout). A second
launch resumes from the checkpoint (its batch function refuses steps before 2, so nothing is
recomputed) and finishes. The 4 logged losses must equal a one-process run on 4 devices of
the same global batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GLOBAL_BATCH, SEQ, STEPS = 8, 16, 4


def batch_at(step: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(1000 + step)
    tokens = rng.integers(3, 97, size=(GLOBAL_BATCH, SEQ + 1), dtype=np.int32)
    mask = np.ones((GLOBAL_BATCH, SEQ), np.float32)
    mask[: GLOBAL_BATCH // 2, -3:] = 0  # some padding, so the mean over rows is weighted
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def train(workdir: str, mesh, batches=batch_at) -> list[dict]:
    from conftest import tiny_config
    from flax import nnx

    from jaxserve.models.transformer import Decoder
    from kvpred.train import TrainConfig, Trainer, lm_loss_fn

    model = Decoder(tiny_config(), rngs=nnx.Rngs(0))
    config = TrainConfig(steps=STEPS, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=2)
    trainer = Trainer(model, nnx.Param, lm_loss_fn(), config, workdir, mesh)
    try:
        return trainer.run(batches)
    finally:
        trainer.close()


def worker_main(argv) -> None:
    """One process of a 2-process run (`python tests/test_distributed.py --mode=...`).

    train: the training run of the module doc. fail: process 1 fails with a usage error while
    process 0 waits (up to 60 s)."""
    from absl import app, flags

    from jaxserve import distributed, sharding

    f = flags.FLAGS
    if f.mode == "fail":
        if distributed.process_index() == 1:
            raise app.UsageError("--planted: a bad flag only process 1 was given")
        time.sleep(60)
        return
    die_at, first = f.die_at, f.first_step

    def batches(step: int) -> dict:
        if step < first:
            raise AssertionError(f"step {step} recomputed: the run should resume at {first}")
        if step == die_at and distributed.process_index() == 1:
            print(f"dying at {time.time()}", flush=True)
            os._exit(9)  # a crash: no clean-up, no goodbye to the peers
        return batch_at(step)

    train(f.workdir, sharding.make_mesh("data:4"), batches)


def start(
    args: list[str],
    grace: int = 20,
    devices: int = 2,
    script: str = __file__,
    module: str | None = None,
) -> subprocess.Popen:
    """`launch_local.sh 2 -- python SCRIPT ARGS` (or `python -m MODULE ARGS`), `devices` per
    process, started in a session of its own (stop it with `os.killpg`), output on stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT, GRACE_S=str(grace), JAXSERVE_COMPILATION_CACHE="")
    env["DEVICES_PER_PROCESS"] = str(devices)
    env.pop("XLA_FLAGS", None)
    cmd = ["bash", os.path.join(ROOT, "scripts", "launch_local.sh"), "2", "--"]
    cmd += [sys.executable, *(["-m", module] if module else [os.path.abspath(script)]), *args]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    """Never leave a process of `start` behind."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def launch(
    args: list[str],
    timeout: float = 90,
    grace: int = 20,
    devices: int = 2,
    script: str = __file__,
    module: str | None = None,
) -> tuple[int, str, float]:
    """`start`, waited for: (status, output, seconds)."""
    t0 = time.monotonic()
    proc = start(args, grace, devices, script, module)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    return proc.returncode, out.decode(errors="replace"), time.monotonic() - t0


def _losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records]


@pytest.mark.parametrize(
    "given, message",
    [
        ((None, 2, 1), "--num_processes=2 needs --coordinator"),
        (("h:1", 2, None), "--num_processes=2 needs --process_id"),
        (("h:1", None, 0), "--coordinator and --process_id need --num_processes"),
        (("h:1", 2, 2), "--process_id=2 is out of range for --num_processes=2 (0 .. 1)"),
        (("localhost", 2, 0), "--coordinator='localhost' is not HOST:PORT"),
        ((":80", 2, 0), "--coordinator=':80' is not HOST:PORT"),
        (("h:99999", 2, 0), "port '99999' is not a number in 1..65535"),
        (("h:http", 2, 0), "port 'http' is not a number"),
        ((None, 1, 3), "--process_id=3 is out of range for --num_processes=1"),
    ],
)
def test_inconsistent_flags_are_usage_errors_naming_them(given, message):
    from absl import app

    from jaxserve.distributed import spec_from_flags

    with pytest.raises(app.UsageError) as e:
        spec_from_flags(*given)
    assert message in str(e.value)


def test_which_flags_start_several_processes():
    from jaxserve.distributed import Spec, spec_from_flags

    assert spec_from_flags(None, None, None) is None  # one process
    assert spec_from_flags(None, None, None, 9, detected="SlurmCluster") == Spec(
        None, None, None, 9
    )
    assert spec_from_flags(None, 1, None, detected="SlurmCluster") is None  # opt out
    assert spec_from_flags("[::1]:8476", 4, 3, 7) == Spec("[::1]:8476", 4, 3, 7)


def test_a_slurm_job_of_several_tasks_is_detected_and_one_task_is_not(monkeypatch):
    from jaxserve.distributed import detect_cluster

    for k in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_"))]:
        monkeypatch.delenv(k)
    assert detect_cluster() is None
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_PROCID="1")
    for k, v in dict(slurm, SLURM_LOCALID="0", SLURM_NTASKS="2").items():
        monkeypatch.setenv(k, v)
    assert detect_cluster() == "SlurmCluster"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert detect_cluster() is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _one(args: list[str], timeout: float = 30) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--mode=fail", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, p.stderr, time.monotonic() - t0


def test_unreachable_coordinator_and_busy_port_are_clear_errors_in_bounded_time():
    import socket

    port = _free_port()  # nobody listens there
    rc, err, secs = _one(
        [f"--coordinator=localhost:{port}", "--num_processes=2"]
        + ["--process_id=1", "--distributed_timeout=2"]
    )
    assert rc == 1, err
    assert err.strip().splitlines()[-1] == (
        f"error: process 1 of 2: the coordinator localhost:{port} (process 0) did not answer "
        "within 2 s (Connection refused); check that process 0 is running and --coordinator "
        "names its host and port"
    )
    assert secs < 20
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, err, _ = _one(
            [f"--coordinator=localhost:{port}", "--num_processes=2"]
            + ["--process_id=0", "--distributed_timeout=2"]
        )
    assert rc == 1, err
    assert f"error: process 0 of 2: cannot serve the coordinator on port {port}" in err
    rc, err, _ = _one(["--coordinator=localhost:1", "--num_processes=2", "--process_id=2"])
    assert rc == 2 and err.strip() == (
        "error: --process_id=2 is out of range for --num_processes=2 (0 .. 1)"
    ), err


def test_a_failing_process_is_named_by_the_others_with_its_error():
    t0 = time.monotonic()
    rc, out, secs = launch(["--mode=fail", "--distributed_timeout=30"], timeout=60, grace=30)
    assert rc != 0, out
    errors = {line[:4]: line[5:] for line in out.splitlines() if " error: " in line}
    planted = "--planted: a bad flag only process 1 was given"
    assert errors["[p1]"] == f"error: process 1 of 2: {planted}", out
    assert errors["[p0]"] == f"error: process 0 of 2: process 1 failed: {planted}", out
    assert time.monotonic() - t0 < 50  # not process 0's 60 s sleep, nor a timeout


@pytest.mark.slow
def test_two_processes_train_like_one_die_clearly_and_resume(tmp_path):
    import numpy as np

    from jaxserve import sharding
    from kvpred.train import read_metrics

    work = str(tmp_path / "multi")
    common = ["--workdir", work, "--distributed_timeout=10"]
    rc, out, secs = launch(common + ["--die_at=2"], grace=30)
    assert rc != 0, out
    lost = [line for line in out.splitlines() if line.startswith("[p0] error:")]
    assert lost and "process 0 of 2: process 1 stopped answering" in lost[0], out
    died = float(out.split("[p1] dying at ")[1].split()[0])
    assert time.time() - died < 20, "process 0 took too long to notice its peer died"
    assert [r["step"] for r in read_metrics(work)] == [1, 2]  # killed after step 2's checkpoint

    rc, out, _ = launch(common + ["--first_step=2"])
    assert rc == 0, out
    multi = read_metrics(work)

    one = train(str(tmp_path / "one"), sharding.make_mesh("data:4"))
    assert [s for s, _ in _losses(multi)] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [loss for _, loss in _losses(multi)], [loss for _, loss in _losses(one)], rtol=2e-5
    )
    assert len({round(r["loss"], 3) for r in one}) > 1  # it trained: the losses move
    run_lines = json.dumps(multi)
    assert "NaN" not in run_lines


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from absl import flags

    from jaxserve import cli

    flags.DEFINE_enum("mode", "train", ["train", "fail"], "What the worker does (worker_main).")
    flags.DEFINE_string("workdir", None, "Training workdir.")
    flags.DEFINE_integer("die_at", -1, "Process 1 dies when this step's batch is asked for.")
    flags.DEFINE_integer("first_step", 0, "Refuse batches before this step (a resumed run).")
    cli.run(worker_main)
