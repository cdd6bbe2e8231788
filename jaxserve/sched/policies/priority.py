"""Preemptive priority scheduling with FastServe's proactive KV manager (mlfq, srpt,
fair_priority, priority).

Given the live requests in priority order (best first), one iteration is planned in counts
first, then carried out:

    1. select   walk the order, up to max_batch. A request whose step needs more pages than
                are free may EVICT resident requests of LOWER priority that are not selected,
                lowest first, as few as suffice; if even that is not enough it is skipped.
                A resident request left out keeps its KV on device (preempted between tokens).
    2. modes    each victim is swapped or dropped (`preempt.victim_mode`, host budget).
    3. defer    if anything is swapped out, selected SWAPPED requests are not swapped in this
                iteration (no ping-pong); the pages they would take stay free for the next
                one, so the best request always makes progress within two iterations. Their
                batch slots go to the next requests that fit in what is left, no eviction.
    4. reserve  if no swap-in is planned and fewer than `reserve_pages` pages would be
                free, evict more non-selected residents, lowest priority first.
    5. prefetch if nothing is swapped out, swap in the next `prefetch` SWAPPED requests in
                priority order (not in the batch) while `reserve_pages` stay free.
    6. carry out: evictions (freeing pages), then the batch in priority order, then prefetch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxserve.sched.plan import Plan
from jaxserve.sched.preempt import Mode
from jaxserve.sched.request import Request, State

if TYPE_CHECKING:
    from jaxserve.sched.scheduler import Scheduler


def plan_by_priority(sched: Scheduler, plan: Plan, order: list[Request]) -> None:
    """Fill `plan` for live requests `order`ed best first (see the module docstring)."""
    cfg = sched.config
    page_size = cfg.page_size
    residents = [r for r in reversed(order) if r.state is State.RUNNING]  # lowest first
    free = sched.allocator.num_free
    selected: list[Request] = []
    victims: list[Request] = []
    gone: set[str] = set()  # victims' ids

    def held(r: Request) -> int:
        return len(r.pages) if r.state is State.RUNNING else 0

    # 1. select. Victims are always the lowest residents, so they are residents[:low];
    # `below` counts the pages of residents ranked after the current request, not evicted.
    low = 0
    below = sum(len(v.pages) for v in residents)
    for r in order:
        if len(selected) >= cfg.max_batch or (below == 0 and free == 0):
            break  # nothing free and no resident left: nothing else can fit
        if r.id in gone:
            continue
        need = -(-(r.prompt_len + r.num_generated) // page_size)  # sched.step_pages(r), inlined
        if r.state is State.RUNNING:
            need -= len(r.pages)
            below -= len(r.pages)
        if need > free:
            if need > free + below:
                continue
            while free < need:  # evict the lowest, as few as suffice
                v = residents[low]
                low += 1
                victims.append(v)
                gone.add(v.id)
                free += len(v.pages)
                below -= len(v.pages)
        free -= need
        selected.append(r)

    # 2. modes (host budget consumed in eviction order)
    modes: dict[str, Mode] = {}
    host = sched.host_used

    def choose(v: Request) -> None:
        nonlocal host
        modes[v.id] = sched.victim_mode(v, host)
        if modes[v.id] == "swap":
            host += sched.kv_pages(v)

    for v in victims:
        choose(v)

    # 3. defer swap-ins when swapping out
    swapping_out = "swap" in modes.values()
    if swapping_out:
        selected = [r for r in selected if r.state is not State.SWAPPED]
        # Refill the freed batch slots with requests that fit in what is left, without
        # evicting anyone (the deferred requests' pages stay counted as taken).
        chosen = {r.id for r in selected}
        for r in order:
            if len(selected) >= cfg.max_batch:
                break
            if r.id in chosen or r.id in gone or r.state is State.SWAPPED:
                continue
            need = sched.step_pages(r) - held(r)
            if need <= free:
                free -= need
                selected.append(r)
        rank = {r.id: i for i, r in enumerate(order)}
        selected.sort(key=lambda r: rank[r.id])
    swapping_in = any(r.state is State.SWAPPED for r in selected)

    # 4. reserve
    if cfg.reserve_pages and not swapping_in:
        chosen = {r.id for r in selected}
        for v in residents:
            if free >= cfg.reserve_pages:
                break
            if v.id not in gone and v.id not in chosen:
                victims.append(v)
                gone.add(v.id)
                free += len(v.pages)
                choose(v)
        swapping_out = "swap" in modes.values()

    # 5. prefetch
    prefetch: list[Request] = []
    if cfg.prefetch and not swapping_out:
        chosen = {r.id for r in selected}
        nxt = [r for r in order if r.state is State.SWAPPED and r.id not in chosen]
        for r in nxt[: cfg.prefetch]:
            if free - r.host_pages < cfg.reserve_pages:
                break
            free -= r.host_pages
            prefetch.append(r)

    # 6. carry out
    for v in victims:
        sched.evict(v, plan, modes[v.id])
    for r in selected:
        sched.run(r, plan)
    for r in prefetch:
        sched.swap_in(r, plan)
