"""The profiler measures what the calibrated cost model fits: the decode grid over batch x
context x steps per call, swaps by size, the update of the resident decode batch."""

from __future__ import annotations

import json

from conftest import random_model, tiny_config

from jaxserve.profiler import profile
from jaxserve.runner import ModelRunner
from jaxserve.sim import fit_profile


def test_profile_measures_the_grid_and_the_fit_reads_it(tmp_path):
    runner = ModelRunner(random_model(tiny_config()))
    prof = profile(
        runner, page_size=4, lengths=[16], batches=[1, 2], reps=1,
        contexts=[8, 32], steps=[1, 2], swap_pages=[1, 4],
    )  # fmt: skip
    assert [g[:3] for g in prof.decode_grid] == [
        (b, c, k) for b in (1, 2) for c in (8, 32) for k in (1, 2)
    ]
    assert all(g[3] > 0 for g in prof.decode_grid)
    sizes = [n for n, _ in prof.swap]
    assert len(sizes) == 3 and sizes[1] * 4 == sizes[2] and all(t > 0 for _, t in prof.swap)
    assert prof.slot_update is not None and prof.slot_update > 0
    path = tmp_path / "profile.json"
    prof.save(str(path))
    cost = fit_profile(str(path), kv_bytes_per_page=sizes[1])
    assert cost.decode_table == tuple(tuple(g) for g in json.loads(path.read_text())["decode_grid"])
    assert cost.slot_update == prof.slot_update and cost.swap[1] > 0
    assert cost.decode_time([8], 1) == prof.decode_grid[0][3]  # read off the grid
