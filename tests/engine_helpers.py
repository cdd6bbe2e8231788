"""Helpers of the engine tests: a scheduler config on pages of PAGE tokens, a random
workload, and serving it to the end. The tests' `model` and `runner` fixtures are in conftest."""

from __future__ import annotations

import numpy as np
from conftest import engine_config

from jaxserve.engine import Engine
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig

PAGE = 4


def _config(num_pages: int, preemption: str = "swap", **kw) -> SchedulerConfig:
    return engine_config(num_pages, preemption, PAGE, **kw)


def _workload(n: int = 8, seed: int = 0):
    rs = np.random.RandomState(seed)
    prompts = [[int(t) for t in rs.randint(3, 128, rs.randint(3, 20))] for _ in range(n)]
    lens = [int(x) for x in rs.randint(5, 30, n)]
    return prompts, lens


def _serve(model, runner, policy, config, prompts, lens, temperature=0.0, **engine_kw):
    engine = Engine(model, policy, config, runner=runner, **engine_kw)
    ids = [
        engine.submit(
            p,
            SamplingParams(max_new_tokens=n, temperature=temperature, seed=5),
            request_id=f"r{i}",
            output_len=n,
        )
        for i, (p, n) in enumerate(zip(prompts, lens))
    ]
    engine.run_until_done(max_iterations=5000)
    assert not engine.has_work
    engine.scheduler.check_invariants()
    return engine, {i: engine.output(i) for i in ids}
