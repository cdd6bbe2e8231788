"""What a training workdir records besides checkpoints: the run record and the metrics log.

* `WORKDIR/run.json` (`claim_workdir`, `read_run`): the settings that define the run and a
  history of its starts, resumes and forced resumes; a workdir refuses other settings unless
  told (`resume="force"`).
* `WORKDIR/metrics.jsonl` (`read_metrics`): one JSON line per logged step, written by `Trainer`.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from absl import logging

from jaxserve.errors import CheckpointError, RunSettingsError
from jaxserve.models.checkpoint import first_line

RUN_FILE = "run.json"
RESUME_MODES = ("auto", "force")
# what --overwrite removes from a workdir (with the command's own outputs, e.g. final/)
RUN_OUTPUTS = ("checkpoints", "checkpoints_damaged", "metrics.jsonl", "summary.json", RUN_FILE)


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def read_run(workdir: str) -> dict | None:
    """WORKDIR/run.json: {"settings": ..., "history": [...]}, or None when there is none."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
        if not isinstance(run.get("settings"), dict) or not isinstance(run.get("history"), list):
            raise ValueError("needs 'settings' and 'history'")
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a run record ({first_line(e)})") from None
    return run


def claim_workdir(
    workdir: str,
    settings: dict,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    outputs: tuple[str, ...] = (),
    write: bool = True,
) -> dict:
    """Check that `workdir` is empty or holds a run with the same `settings`; record this one.

    settings: what defines the run (model, data, optimiser and schedule, loss weights, seed,
      mesh), as JSON-able values keyed by flag name.
    resume: "auto" refuses a workdir made with other settings (`RunSettingsError` naming each
      difference and both values); "force" continues anyway and records the differences in
      the run's history (and removes the stale summary.json).
    overwrite: remove what an earlier run left (`RUN_OUTPUTS` and `outputs`) and start over.
    write: False only checks and returns the record, changing nothing (the processes of a
      multi-process run other than process 0).
    Returns the run record written to WORKDIR/run.json.
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, not {resume!r}")
    settings = _jsonable(settings)
    workdir = os.path.abspath(workdir)
    if overwrite and write:
        for name in RUN_OUTPUTS + tuple(outputs):
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    old = None if overwrite else read_run(workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    steps = (
        sorted(int(n) for n in os.listdir(ckpt) if n.isdigit())
        if os.path.isdir(ckpt) and not overwrite
        else []
    )
    step = steps[-1] if steps else 0
    changed: dict[str, list] = {}
    if old is None and steps:
        if resume != "force":
            raise RunSettingsError(
                f"--workdir={workdir} holds checkpoints but no record of the settings that made "
                f"them ({RUN_FILE}); pass --overwrite to start over or --resume=force to continue"
            )
        event = "resume_forced"
    elif old is None:
        event = "overwrite" if overwrite else "start"
    else:
        prev = old["settings"]
        changed = {
            k: [prev.get(k), settings.get(k)]
            for k in sorted(set(prev) | set(settings))
            if prev.get(k) != settings.get(k)
        }
        if changed and not steps:  # nothing was trained (it failed or was killed early):
            changed, old = {}, None  # a fresh start with these settings, nothing to mix
        if changed and resume != "force":
            diffs = "; ".join(f"--{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise RunSettingsError(
                f"--workdir={workdir} holds a run with other settings ({diffs}); rerun with "
                "its settings, or pass --overwrite to start over or --resume=force to continue "
                "with these (recorded in its history)"
            )
        event = "resume_forced" if changed else ("resume" if steps else "restart")
    if old is None and event == "restart":
        event = "start"
    history = list(old["history"]) if old else []
    history.append(
        {
            "event": event,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "from_step": step,
            **({"changed": changed} if changed else {}),
        }
    )
    run = {"settings": settings, "history": history}
    if not write:
        return run
    if event == "resume_forced":  # it described the run before the change
        summary = os.path.join(workdir, "summary.json")
        if os.path.exists(summary):
            os.remove(summary)
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(run, f, indent=1)
    os.replace(tmp, os.path.join(workdir, RUN_FILE))
    return run


def has_checkpoint(workdir: str) -> bool:
    """Whether a `Trainer` on `workdir` would resume (a finished checkpoint step is there)."""
    path = os.path.join(workdir, "checkpoints")
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`. A torn last line (the process was killed while
    writing it) is dropped with a warning; a bad line before it is a `CheckpointError`."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("a record needs an integer 'step'")
        except ValueError as e:
            if i == len(lines) - 1:
                logging.warning("%s:%d: dropping a torn last line (%s)", path, n, first_line(e))
                break
            raise CheckpointError(f"{path}:{n}: not a metrics record ({first_line(e)})") from None
        out.append(rec)
    return out
