"""Serving workloads for scheduling experiments: who asks for what, and when.

    arrival process (arrivals.py: Poisson | Gamma | bursts)  ->  arrival times [n]
    lengths (lengths.py: fitted synthetic | datasets.py: ShareGPT / Alpaca file)
        ->  prompt, output lengths [n]
    -> list[TraceRequest] (request.py) sorted by arrival  <->  trace JSONL (trace.py)
    conversations.py: multi-turn conversations; clients.py: several tenants in one workload
    multiturn.py: "multiturn_synth", heavy, light and on/off clients in conversations

`make_workload` (registry.py) is the one entry point experiments call: it finds the source
registered for a name or file and builds the trace. A new workload is one module that
registers a `Source`. Arrivals and lengths come from two independent random streams spawned
from one seed, so a rate sweep with a fixed seed serves the same requests at every rate
(common random numbers), only spaced differently.

No jax here: workloads are built and tested without an accelerator.
"""

from jaxserve.workload.arrivals import (
    ARRIVALS,
    arrivals,
    burst_arrivals,
    gamma_arrivals,
    poisson_arrivals,
)
from jaxserve.workload.clients import assign_clients, client_weights, merge_workloads
from jaxserve.workload.conversations import conversation_workload, next_turn_release
from jaxserve.workload.datasets import detect_layout, read_alpaca, read_dataset, read_sharegpt
from jaxserve.workload.lengths import (
    LENGTH_DISTRIBUTIONS,
    AlpacaSynth,
    LengthDistribution,
    ShareGPTSynth,
    alpaca_synth,
    sharegpt_synth,
)
from jaxserve.workload.multiturn import multiturn_workload
from jaxserve.workload.registry import (
    SOURCES,
    Source,
    WorkloadSpec,
    find_source,
    known_workloads,
    make_workload,
    named_workloads,
    register_source,
    workload_for,
)
from jaxserve.workload.request import (
    Tokenize,
    TraceRequest,
    WorkloadError,
    replay_cap,
    whitespace_tokenize,
)
from jaxserve.workload.trace import read_trace, write_trace

__all__ = [
    "ARRIVALS",
    "LENGTH_DISTRIBUTIONS",
    "SOURCES",
    "AlpacaSynth",
    "LengthDistribution",
    "ShareGPTSynth",
    "Source",
    "Tokenize",
    "TraceRequest",
    "WorkloadError",
    "WorkloadSpec",
    "alpaca_synth",
    "arrivals",
    "assign_clients",
    "client_weights",
    "burst_arrivals",
    "conversation_workload",
    "detect_layout",
    "find_source",
    "gamma_arrivals",
    "known_workloads",
    "make_workload",
    "workload_for",
    "merge_workloads",
    "multiturn_workload",
    "named_workloads",
    "next_turn_release",
    "poisson_arrivals",
    "read_alpaca",
    "read_dataset",
    "read_sharegpt",
    "read_trace",
    "register_source",
    "sharegpt_synth",
    "replay_cap",
    "whitespace_tokenize",
    "write_trace",
]
