"""Pure-Python scheduling for token-level preemptive serving (no JAX imported here).

Request, State        request.py    lengths, state machine, token/page accounting
PageAllocator         allocator.py  free pages as contiguous runs (block groups)
Plan                  plan.py       one iteration: swap_out -> swap_in -> prefill + decode
SchedulerConfig       config.py     every knob (future CLI flags)
Scheduler, StepResult scheduler.py  add / schedule / update / cancel, invariants
policies              fcfs, vllm, mlfq, skip_join_mlfq, srpt (oracle), vtc, fair_priority,
                      priority
StepTime              steptime.py   the engine's decode step-time estimate (chunk sizes)
simloop               the simulator's loop and linear cost (from `jaxserve.sim`)
"""

from jaxserve.sched.allocator import NULL_PAGE, OutOfPages, PageAllocator, contiguous_runs
from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.policies import POLICIES
from jaxserve.sched.request import Request, State
from jaxserve.sched.scheduler import Scheduler, StepResult, make_scheduler, reject_reason

__all__ = [
    "NULL_PAGE",
    "POLICIES",
    "OutOfPages",
    "PageAllocator",
    "Plan",
    "Request",
    "Scheduler",
    "SchedulerConfig",
    "State",
    "StepResult",
    "contiguous_runs",
    "make_scheduler",
    "reject_reason",
]
