"""skip_join_mlfq (FastServe): MLFQ where a new job skips the queues its prefill overruns.

A job joins the highest-priority queue whose quantum covers its first-iteration (prefill)
time, read from the profiled `prefill_table` (linear interpolation at prompt_len; without a
table, prompt_len / prefill_tokens_per_s):

    queue = min i such that q0 * 2**i >= prefill_seconds(prompt_len), capped at num_queues-1

Example (q0 = 10 ms, table {16: 5 ms, 512: 30 ms, 2048: 90 ms}): prompts of 16, 512, 2048
tokens join queues 0 (10 >= 5), 2 (40 >= 30 > 20) and 4 (160 >= 90 > 80).
Everything else (demotion, starvation guard, proactive KV manager) is `mlfq`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.config import SchedulerConfig
from jaxserve.sched.policies.mlfq import MLFQ
from jaxserve.sched.request import Request

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


def skip_join_queue(config: SchedulerConfig, prompt_len: int) -> int:
    """The queue a new job of `prompt_len` tokens joins."""
    t = config.prefill_seconds(prompt_len)
    queue = 0
    while queue < config.num_queues - 1 and config.quantum(queue) < t:
        queue += 1
    return queue


class SkipJoinMLFQ(MLFQ):
    name = "skip_join_mlfq"

    def entry_queue(self, sched: Scheduler, r: Request) -> int:
        return skip_join_queue(self.config, r.prompt_len)
