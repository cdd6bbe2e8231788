"""Multi-process start-up on JAX's multi-controller runtime (`jax.distributed`).

Every entry point runs the same program in each process; `jaxserve.cli` calls `start()` after
parsing flags and before `main`, so the runtime is up before anything touches a device:

    --coordinator=HOST:PORT --num_processes=N --process_id=I   explicit (any machine)
    (none of them)   a cluster JAX detects (Slurm, Open MPI, TPU pod slice), else one process
    --num_processes=1                                          one process, no detection

    start() -> check flags -> [I > 0: wait for HOST:PORT to accept, else a clear error]
            -> jax.distributed.initialize(..., timeouts = --distributed_timeout)
            -> jax.devices() spans every process; --mesh then spans them too

Failure is bounded by `--distributed_timeout` (T) seconds. An unreachable coordinator is
reported by the probe. Each process runs a `jaxserve.watchdog.Watchdog` thread over JAX's
coordination key-value store: it posts its own heartbeat every second, and a process that
fails posts its error line (`announce_failure`, called by `cli`), so within about T/2 seconds
every other process exits with `error: process 0 of 2: process 1 failed: <its error>` or
`... process 1 stopped answering (killed, crashed or hung)`, even while blocked in a
collective that will never finish. JAX's own heartbeat (T) is the backstop: it aborts every
process, naming the task.
"""

from __future__ import annotations

import atexit
import dataclasses
import socket
import sys
import time

from absl import app, flags, logging

from jaxserve.errors import InputError

_COORDINATOR = flags.DEFINE_string(
    "coordinator",
    None,
    "HOST:PORT of process 0's coordination service, for a multi-process run (with "
    "--num_processes and --process_id). Default: detected on clusters JAX knows "
    "(Slurm, Open MPI, TPU pod slices), else a single process.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-process run (1: a single process).", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 .. num_processes-1.", lower_bound=0
)
_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout",
    60,
    "Seconds to wait for every process to connect; a process silent this long counts as dead.",
    lower_bound=1,
)


class DistributedError(InputError):
    """The processes of a multi-process run cannot reach one another (names process and why)."""


@dataclasses.dataclass(frozen=True)
class Spec:
    coordinator: str | None  # HOST:PORT; None: detected from the cluster environment
    num_processes: int | None  # None: detected
    process_id: int | None  # None: detected
    timeout_s: int  # connect (initialization), heartbeat and shutdown timeouts


def parse_address(address: str) -> tuple[str, int]:
    """`"host:1234"` / `"[::1]:1234"` -> (host, port); ValueError naming the problem."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"--coordinator={address!r} is not HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator={address!r}: port {port!r} is not a number in 1..65535")
    return host.strip("[]"), int(port)


def detect_cluster() -> str | None:
    """The name of a cluster environment JAX would configure itself from with more than one
    process (a Slurm job of several tasks, an `mpirun`, a multi-host TPU slice), else None.
    Kubernetes is left out: a single pod is the common case there (pass the flags)."""
    try:  # JAX's registry of cluster environments (not public API: any failure means none)
        from jax._src.clusters import ClusterEnv

        for env in ClusterEnv._cluster_types:
            if env.opt_in_only_method or "k8s" in env.__name__.lower():
                continue
            if env.is_env_present() and env.get_process_count() > 1:
                return env.__name__
    except Exception:  # noqa: BLE001
        return None
    return None


def spec_from_flags(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeout_s: int = 60,
    detected: str | None = None,
) -> Spec | None:
    """The run these flags ask for; None for a single process. app.UsageError when the flags
    disagree. `detected`: the cluster environment found (used only when no flag is given)."""
    if coordinator is None and num_processes is None and process_id is None:
        return Spec(None, None, None, timeout_s) if detected else None
    if num_processes is None:
        raise app.UsageError("--coordinator and --process_id need --num_processes")
    if process_id is not None and process_id >= num_processes:
        raise app.UsageError(
            f"--process_id={process_id} is out of range for --num_processes={num_processes} "
            f"(0 .. {num_processes - 1})"
        )
    if num_processes == 1:
        return None
    if coordinator is None or process_id is None:
        missing = " and ".join(
            f"--{n}"
            for n, v in (("coordinator", coordinator), ("process_id", process_id))
            if v is None
        )
        raise app.UsageError(f"--num_processes={num_processes} needs {missing}")
    try:
        parse_address(coordinator)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return Spec(coordinator, num_processes, process_id, timeout_s)


def wait_for_coordinator(spec: Spec) -> None:
    """Until HOST:PORT accepts a connection, at most `spec.timeout_s`; DistributedError else.

    JAX itself would abort the process after its timeout with a gRPC status; this says which
    process waited for what, in one line."""
    host, port = parse_address(spec.coordinator)
    deadline = time.monotonic() + spec.timeout_s
    last = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            last = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise DistributedError(
                f"process {spec.process_id} of {spec.num_processes}: the coordinator "
                f"{spec.coordinator} (process 0) did not answer within {spec.timeout_s} s "
                f"({last}); check that process 0 is running and --coordinator names its host "
                "and port"
            )
        time.sleep(0.2)


def check_port_free(spec: Spec) -> None:
    """Process 0 binds PORT for the coordination service: a port in use is a clear error."""
    _, port = parse_address(spec.coordinator)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise DistributedError(
                f"process 0 of {spec.num_processes}: cannot serve the coordinator on port "
                f"{port} ({e.strerror}); choose a free port in --coordinator"
            ) from None


def initialize(spec: Spec) -> None:
    import jax

    timeouts = dict(
        initialization_timeout=spec.timeout_s,
        heartbeat_timeout_seconds=spec.timeout_s,
        shutdown_timeout_seconds=spec.timeout_s,
    )
    if spec.coordinator is None:  # a detected cluster fills in address, count and index
        jax.distributed.initialize(**timeouts)
    else:
        if spec.process_id == 0:
            check_port_free(spec)
        else:
            wait_for_coordinator(spec)
        logging.info(
            "process %d of %d: connecting to %s (up to %d s)",
            spec.process_id,
            spec.num_processes,
            spec.coordinator,
            spec.timeout_s,
        )
        jax.distributed.initialize(
            spec.coordinator, spec.num_processes, spec.process_id, **timeouts
        )
    logging.info(
        "%s devices: %d local, %d global", label(), jax.local_device_count(), jax.device_count()
    )
    global _watchdog
    if jax.process_count() > 1:
        from jaxserve.watchdog import Watchdog

        _watchdog = Watchdog(_client(), spec.timeout_s / 2, label())
        _watchdog.start()
        atexit.register(_watchdog.exit)  # runs before JAX's own shutdown (registered earlier)


def start() -> Spec | None:
    """Initialize the runtime the command-line flags ask for (module doc); None: one process."""
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not any(v is not None for v in explicit) and "jax" not in sys.modules:
        return None  # a command that never imports JAX (the simulator) runs as one process
    spec = spec_from_flags(
        *explicit,
        _TIMEOUT.value,
        detected=None if any(v is not None for v in explicit) else detect_cluster(),
    )
    if spec is not None and not is_initialized():
        initialize(spec)
    return spec


def is_initialized() -> bool:
    if "jax" not in sys.modules:  # (and do not import it just to ask)
        return False
    import jax

    return jax.distributed.is_initialized()


def process_index() -> int:
    """This process's index (0 without a multi-process runtime)."""
    if not is_initialized():
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    if not is_initialized():
        return 1
    import jax

    return jax.process_count()


def is_main() -> bool:
    """Whether this process writes results and events (process 0)."""
    return process_index() == 0


def label() -> str:
    """ "process I of N" in a multi-process run, else ""."""
    return f"process {process_index()} of {process_count()}" if process_count() > 1 else ""


_PEER_SIGNS = ("gloo", "connection closed", "connection reset", "heartbeat", "unavailable")


def peer_failure(e: BaseException) -> str | None:
    """One line for an error that says another process went away, else None."""
    if process_count() < 2 or not isinstance(e, RuntimeError):
        return None
    msg = " ".join(str(e).split())
    if not any(s in msg.lower() for s in _PEER_SIGNS):
        return None
    return (
        f"{label()}: lost contact with another process ({msg[:300]}); it has probably "
        "died: see its output"
    )


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op for one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_mesh(mesh) -> None:
    """ValueError unless `mesh` holds devices of every process (a process without any could
    not take part in the program)."""
    import jax

    have = {d.process_index for d in mesh.devices.flat}
    if len(have) < jax.process_count():
        raise ValueError(
            f"the mesh {dict(mesh.shape)} holds devices of processes {sorted(have)} only; a run "
            f"of {jax.process_count()} processes needs a mesh over all {jax.device_count()} "
            f"devices ({jax.local_device_count()} per process)"
        )


def to_local(module):
    """An nnx module whose arrays all live on this process's first device (gathered from
    every process where they are sharded across processes); the module itself for one
    process. Every process must call it (it is a collective)."""
    if process_count() < 2:
        return module
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    device = jax.local_devices()[0]

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)
        return x

    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(one, state))


def to_host(module):
    """An nnx module whose arrays are numpy copies of this process's (every process holds the
    same values), so that `jax.device_put` can place them on a mesh over every process's
    devices: it refuses an array already committed to a device (one restored from a
    checkpoint) there. The module itself for one process."""
    if process_count() < 2:
        return module
    import jax
    import numpy as np
    from flax import nnx

    graphdef, state = nnx.split(module)
    return nnx.merge(
        graphdef, jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, state)
    )


def local_mesh():
    """A one-device mesh on this process's first device, for work every process does alone
    (evaluation after training); None (the callee's default) for one process."""
    if process_count() < 2:
        return None
    import jax

    from jaxserve import sharding

    return sharding.make_mesh({"data": 1, "model": 1}, jax.local_devices()[:1])


_watchdog = None  # the running `jaxserve.watchdog.Watchdog` of a multi-process run


def _client():
    from jax._src import distributed as jd  # the runtime's client (not public API)

    return jd.global_state.client


def announce_failure(message: str) -> None:
    """Post this process's error line for the others to report (no-op for one process)."""
    if _watchdog is not None:
        _watchdog.announce(message.removeprefix(f"{label()}: "))


def single_process_only(command: str) -> None:
    """app.UsageError when a command that runs on one process is started as several."""
    n = max(process_count(), _NUM_PROCESSES.value or 1)
    if n > 1:
        raise app.UsageError(
            f"{command} runs on one process, not {n}; across processes run "
            "experiments.train_lm, train_kvpred, serve or server (docs/distributed.md)"
        )
