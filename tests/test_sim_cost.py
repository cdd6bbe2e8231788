"""Cost models: the roofline against numbers worked by hand, the calibrated fit recovering
the coefficients a profile was made from, and the presets' published figures."""

from __future__ import annotations

import json

import pytest

from jaxserve.errors import InputError
from jaxserve.sched.plan import Plan
from jaxserve.sim import (
    HARDWARE,
    MODELS,
    Accelerator,
    ModelShape,
    Parallelism,
    RooflineCost,
    fit_profile,
)
from jaxserve.sim.run import plan_seconds

# 1 TFLOP/s, 1 GB/s HBM, 0.1 GB/s host link, 1 GB/s links with 1 us latency
TOY_HW = Accelerator("toy", {"bfloat16": 1e12}, 1e9, 1e9, 1e8, 1e9, 1e-6)
SLOW_HW = Accelerator("slow", {"bfloat16": 1e9}, 1e9, 1e9, 1e8, 1e9, 1e-6)
# 2 layers, d 4, 2 heads of 2, plain MLP of 8, vocab 10: 128 matrix parameters a layer
# (q, o: 2*4*4; k, v: 2*4*4; MLP 2*4*8), 2*128 + 2*10*4 = 336 in all
TOY = ModelShape("toy", 2, 4, 2, 2, 2, 8, 10, gated_mlp=False)


def roofline(hw=TOY_HW, **par) -> RooflineCost:
    return RooflineCost(hw, TOY, Parallelism(**par), memory_fraction=1.0, activation_bytes=0)


def test_roofline_decode_by_hand():
    """One decode row at context 10, bf16. A layer: flops 2*128 + 4*10*4 = 416 (0.4 ns at
    1 TFLOP/s); bytes 128*2 weights + (10 + 1) tokens * 16 B of KV = 432 (432 ns at 1 GB/s):
    memory bound. Head: 40 params, 80 B -> 80 ns. 2 * 432 + 80 = 944 ns.
    tp=2: weights and KV heads halve (216 ns a layer) and each layer adds two ring
    all-reduces of 8 B: 2*(1/2)*8 B / 1 GB/s + 2*1*1 us = 2.008 us each -> 2 * (216 ns +
    4.016 us) + 40 ns = 8.504 us.
    pp=2, one row: stage 1 is one layer (432 ns), stage 2 a layer and the head (512 ns), plus
    one activation send (8 B + 1 us): 1.952 us. Two rows in two micro-batches: three slots
    (the bubble is one), 2 * 432 + 512 + 1008 ns = 2.384 us."""
    assert roofline().compute_time([], [10]) == pytest.approx(944e-9)
    assert roofline(tp=2).compute_time([], [10]) == pytest.approx(8.504e-6)
    assert roofline(pp=2).compute_time([], [10]) == pytest.approx(1.952e-6)
    assert roofline(pp=2).compute_time([], [10, 10]) == pytest.approx(2.384e-6)


def test_roofline_prefill_is_compute_bound_on_a_slow_chip():
    """A prompt of 1000 tokens at 1 GFLOP/s: a layer is 2*1000*128 + 4*(1000*1001/2)*4 =
    8.264e6 flops (8.264 ms) against 256 + 1000*16 B (16 us); the head 80 flops and 80 B
    (80 ns). 2 * 8.264 ms + 80 ns."""
    assert roofline(SLOW_HW).prefill_seconds(1000) == pytest.approx(2 * 8.264e-3 + 80e-9)


def test_roofline_memory_and_swaps_by_hand():
    """KV of a token on one device: 2 (K, V) * 2 layers * 2 heads * 2 dims * 2 B = 32 B, a
    page of 16 tokens 512 B; weights 336 * 2 B. Pool = (1 GB - 672 B) // 512 B + the null
    page. A swap of 3 pages moves 1536 B at 0.1 GB/s: 15.36 us; with tp=2 each device moves
    its half at once: 7.68 us. The scheduler's page is the whole model's: 512 B."""
    c = roofline()
    assert c.kv_pages() == int((1e9 - 672) // 512) + 1
    assert c.swap_time(3) == pytest.approx(15.36e-6)
    assert roofline(tp=2).swap_time(3) == pytest.approx(7.68e-6)
    assert c.kv_bytes_per_page == 512
    plan = Plan()
    assert c.iteration_time(plan) == 0.0


def test_roofline_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="not divisible"):
        RooflineCost(HARDWARE["a100-80g"], MODELS["gpt3-175b"], Parallelism(pp=5))
    with pytest.raises(ValueError, match="does not fit"):
        RooflineCost(HARDWARE["tpu-v5e"], MODELS["gpt3-175b"]).kv_pages()
    with pytest.raises(ValueError, match="float8"):
        RooflineCost(HARDWARE["a100-80g"], MODELS["llama-3-8b"], dtype="float8")


def test_presets_carry_the_published_figures():
    assert MODELS["gpt3-175b"].num_params == pytest.approx(175e9, rel=0.01)
    assert MODELS["opt-13b"].num_params == pytest.approx(13e9, rel=0.02)
    assert MODELS["llama-3-8b"].num_params == pytest.approx(8.03e9, rel=0.01)
    assert MODELS["qwen-32b"].num_params == pytest.approx(32.8e9, rel=0.01)
    a100, h200 = HARDWARE["a100-80g"], HARDWARE["h200"]
    assert a100.peak("bfloat16") == 312e12 and a100.hbm_bandwidth == 2.039e12
    assert h200.hbm_bytes == 141e9 and h200.hbm_bandwidth == 4.8e12
    assert HARDWARE["tpu-v5e"].peak("bfloat16") == 197e12
    # GPT-3 on 16 A100s (tp 8, pp 2): 21.9 GB of weights a device; batch-16 decode is
    # bandwidth bound, so it costs about as much as reading the weights 3 times (2
    # micro-batches through 2 stages), ~32 ms, far more than a batch-1 step's flops.
    c = RooflineCost(a100, MODELS["gpt3-175b"], Parallelism(8, 2))
    t = c.compute_time([], [512] * 16)
    assert 0.03 < t < 0.07


PREFILL = (1e-3, 2e-5, 3e-8)
DECODE = (5e-4, 1e-3, 2e-4, 1e-7)
SWAP = (1e-4, 2e9)


def made_profile() -> dict:
    """A profile measured on an engine whose costs are exactly PREFILL, DECODE and SWAP."""
    p0, p1, p2 = PREFILL
    d0, d1, d2, d3 = DECODE
    s0, bw = SWAP
    return {
        "model": "toy",
        "device": "cpu",
        "prefill": [(n, p0 + p1 * n + p2 * n * n) for n in (16, 32, 64, 128, 256, 512)],
        "decode": [(1, 0.0), (8, 0.0)],
        "decode_grid": [
            (b, c, k, d0 + k * (d1 + d2 * b + d3 * b * c))
            for b in (1, 2, 4, 8)
            for c in (16, 64, 256)
            for k in (1, 4, 16)
        ],
        "swap": [(n, 2 * (s0 + n / bw)) for n in (1 << 14, 1 << 16, 1 << 18)],
        "swap_bandwidth": bw,
        "prefill_tokens_per_s": 1e4,
        "page_size": 16,
    }


def test_calibrated_fit_recovers_the_profiles_coefficients(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(made_profile()))
    cost = fit_profile(str(path), kv_bytes_per_page=4096)
    assert cost.prefill == pytest.approx(PREFILL, rel=1e-6)
    assert cost.decode == pytest.approx(DECODE, rel=1e-6)
    assert cost.swap == pytest.approx(SWAP, rel=1e-6)


def test_calibrated_cost_prices_the_engines_buckets():
    """Prompts of 20, 40, 100 tokens pad to [4, 128]; decode rows at 30, 50, 70 for 2 steps
    pad to 4 rows and reach 71 tokens = 5 pages -> 8 pages = 128 tokens attended. A swap-out
    of 3 pages of 4 kB: s0 + 12 kB / bw."""
    cost = fit_profile(made_profile(), kv_bytes_per_page=4096)
    p0, p1, p2 = PREFILL
    d0, d1, d2, d3 = DECODE
    prefill = p0 + 4 * (p1 * 128 + p2 * 128**2)
    assert cost.prefill_time([20, 40, 100]) == pytest.approx(prefill)
    assert cost.decode_time([30, 50, 70], 2) == pytest.approx(d0 + 2 * (d1 + 4 * d2 + 512 * d3))
    assert cost.swap_time(3) == pytest.approx(SWAP[0] + 3 * 4096 / SWAP[1])
    assert plan_seconds(cost, prefill=[20, 40, 100]) == pytest.approx(prefill)


def test_calibrated_fit_names_a_bad_profile(tmp_path):
    bad = tmp_path / "profile.json"
    bad.write_text('{"model": "x"}')
    with pytest.raises(InputError, match="profile.json"):
        fit_profile(str(bad), 4096)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a JSON profile"):
        fit_profile(str(bad), 4096)


def test_calibrated_cost_reads_measured_decode_calls_off_the_grid():
    """A grid point that the formula misses (batch 2, context 64, 1 step measured at 9 ms) is
    what the cost model answers for that call, and halfway to the next context it
    interpolates; a batch bucket the grid lacks (16) falls back to the fit."""
    prof = made_profile()
    grid = [list(p) for p in prof["decode_grid"]]
    for p in grid:
        if p[:3] == [2, 64, 1]:
            p[3] = 9e-3
    prof["decode_grid"] = grid
    cost = fit_profile(prof, kv_bytes_per_page=4096)
    assert cost.decode_time([60, 64], 1) == pytest.approx(9e-3)
    at256 = next(p[3] for p in grid if p[:3] == [2, 256, 1])
    assert cost.decode_time([100, 128], 1) == pytest.approx(9e-3 + (at256 - 9e-3) * 64 / 192)
    d0, d1, d2, d3 = cost.decode
    assert cost.decode_time([64] * 9, 1) == pytest.approx(d0 + d1 + 16 * d2 + 16 * 64 * d3)
    assert fit_profile(prof, 4096, table=False).decode_time([60, 64], 1) != pytest.approx(9e-3)


@pytest.mark.parametrize("par", [{}, {"tp": 2}, {"pp": 2}, {"pp": 2, "microbatches": 3}])
def test_roofline_decode_steps_are_its_iteration_times(par):
    """`decode_step_time(contexts)(j)`, memoised by the micro-batches' context sums, is the
    same float as `iteration_time` of the decode-only plan at contexts + j, also for batches
    whose total context is equal but whose split into micro-batches is not."""
    import random

    cost = RooflineCost(HARDWARE["h100"], MODELS["llama-3-8b"], Parallelism(**par))
    rng = random.Random(0)
    batches = [[1, 100], [50, 51], [100, 1], [7], [3, 9, 27, 81], [40, 40, 40, 1]]
    batches += [[rng.randint(1, 500) for _ in range(rng.randint(1, 16))] for _ in range(30)]
    for contexts in batches:
        at = cost.decode_step_time(contexts)
        for j in (0, 1, 5, 17):
            assert at(j) == plan_seconds(cost, decode=[c + j for c in contexts])
            assert at(j) == RooflineCost.compute_time(cost, [], [c + j for c in contexts])
