"""scripts/validate_sim.py's calibration: each round's device-time scale is the engine's
seconds over the cost model's for that round's own calibration calls, read by round from
records in either layout (calls kept by round, or one list per policy)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from jaxserve.sim.calibrated import CalibratedCost

_PATH = os.path.join(os.path.dirname(__file__), "..", "scripts", "validate_sim.py")
_spec = importlib.util.spec_from_file_location("validate_sim", _PATH)
validate_sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate_sim)

COST = CalibratedCost(
    prefill=(2e-3, 1e-4, 1e-7),
    decode=(1e-3, 5e-4, 2e-4, 1e-6),
    swap=(1e-4, 1e9),
    page_size=16,
    kv_bytes_per_page=1 << 20,
)


def calls(scale: float, first_prompt: int) -> list:
    """[prefill lengths, decode contexts, steps, swapped pages, seconds] of one served run
    on a machine `scale` times as slow as COST: a prefill, multi-step decodes, swaps."""
    shapes = [
        ([first_prompt], [], 1, 0),
        ([], [first_prompt], 16, 0),
        ([30, 70], [first_prompt + 16], 1, 0),
        ([], [40, 80, 120], 8, 0),
        ([], [50, 90], 4, 6),  # a swap of 6 pages before the call
    ]
    out = []
    for pre, dec, steps, pages in shapes:
        t = COST.prefill_time(pre) + COST.decode_time(dec, steps) + COST.swap_time(pages)
        out.append([pre, dec, steps, pages, scale * t])
    return out


def engine(flights: dict, rounds: int) -> dict:
    return {"rounds": rounds, "calibration": {"flights": flights}}


def test_each_rounds_scale_is_its_calls_measured_over_priced():
    by_round = {"fcfs": [calls(1.3, 12), calls(0.8, 12)], "srpt": [calls(1.3, 9), calls(0.8, 9)]}
    e = engine(by_round, rounds=2)
    for k, scale in enumerate((1.3, 0.8)):
        assert validate_sim.call_time_scale(validate_sim.calibration_flights(e, k), COST) == (
            pytest.approx(scale, rel=1e-9)
        )
    assert validate_sim.round_time_scale("calls", e, COST, None, None, 1) == (
        pytest.approx(0.8, rel=1e-9)
    )
    assert validate_sim.round_time_scale("none", e, COST, None, None, 1) == 1.0
    assert len(validate_sim.calibration_flights(e)) == 4 * len(calls(1.0, 12))
    with pytest.raises(ValueError, match="no device calls"):
        validate_sim.call_time_scale([], COST)


def test_records_with_one_list_per_policy_are_cut_into_the_same_rounds():
    by_round = {"fcfs": [calls(1.3, 12), calls(0.8, 12), calls(1.1, 12)]}
    flat = {"fcfs": [f for r in by_round["fcfs"] for f in r]}
    for k in range(3):
        assert validate_sim.calibration_flights(engine(flat, 3), k) == (
            validate_sim.calibration_flights(engine(by_round, 3), k)
        )
    with pytest.raises(ValueError, match="no calibration calls of round 3"):
        validate_sim.calibration_flights(engine(flat, 4), 3)


def test_round_0s_scale_is_read_before_the_other_rounds_run():
    """The run sets its traces' rates from round 0's scale while only round 0 is served."""
    e = engine({"fcfs": [calls(1.3, 12)], "srpt": [calls(1.3, 9)]}, rounds=3)
    assert validate_sim.round_time_scale("calls", e, COST, None, None, 0) == (
        pytest.approx(1.3, rel=1e-9)
    )
