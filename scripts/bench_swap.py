"""Swap time of one long request by transfer design: per page, per block group, one block.

    python scripts/bench_swap.py --models=tiny,small --pages=64 --rounds=7 \
        --out=runs/bench_swap.json

A request's KV (`--pages` pages of `--page_size` tokens, every layer) is swapped out to the
host tier and back into other pages, waiting for both, with the host tier cutting the swap
into transfers three ways (`HostTier(transfer=...)`):

  * pages:  one transfer per page (vLLM's swap: a copy per block);
  * groups: one transfer per contiguous run of page ids (FastSwitch's block groups);
  * gather: every page gathered on the device into one block, moved as one transfer (the
    engine's default).

Its pages are laid out two ways: contiguous (what the allocator hands a request that grew
alone) and fragmented into runs of `--run` pages (what interleaved growth leaves). Rounds
interleave the designs; the median and range over rounds of per-page / groups and
per-page / gather are printed, with the absolute times and bandwidths.
"""

from __future__ import annotations

import argparse

import jax

from jaxserve.bench import Rounds, fmt_spread, save_report, spread, timed
from jaxserve.config import get_preset
from jaxserve.kvcache.host import TRANSFERS, HostTier
from jaxserve.runner import ModelRunner


def layouts(pages: int, run: int) -> dict[str, tuple[list[int], list[int]]]:
    """(pages swapped out, pages swapped into) per layout; the pool holds 1 + 4 * pages."""
    contiguous = list(range(1, 1 + pages))
    # runs of `run` pages with a gap of `run` between them
    fragmented = [1 + 2 * run * (i // run) + i % run for i in range(pages)]
    back = [p + 2 * pages + 1 for p in contiguous]
    return {"contiguous": (contiguous, back), "fragmented": (fragmented, back)}


def bench_model(name: str, args) -> dict:
    config = get_preset(name)
    runner = ModelRunner(_model(config))
    kv = runner.new_kv(1 + 4 * args.pages, args.page_size)
    tiers = {t: HostTier(runner.kv_sharding, args.host_mode, t) for t in TRANSFERS}
    cases = layouts(args.pages, args.run)
    state = {"kv": kv}

    def swap(tier: HostTier, out_pages, in_pages):
        host = tier.swap_out(state["kv"], out_pages)
        host.settle()  # waits for the copy to reach the host
        state["kv"] = tier.swap_in(state["kv"], host, in_pages)
        state["kv"].block_until_ready()
        return host.nbytes

    for tier in tiers.values():  # compile every program
        for out_pages, in_pages in cases.values():
            swap(tier, out_pages, in_pages)
    rounds = Rounds(reps=args.rounds, max_rounds=2 * args.rounds, time_budget_s=args.budget_s)
    nbytes = 0
    while rounds.more():
        with rounds.round() as r:
            for layout, (out_pages, in_pages) in cases.items():
                for t, tier in tiers.items():
                    run = lambda a=tier, b=out_pages, c=in_pages: swap(a, b, c)  # noqa: E731
                    r[f"{layout}/{t}"], nbytes = timed(run)
    used, which = rounds.selected()
    result = {"bytes": nbytes, "rounds": which, "layouts": {}}
    print(f"{name}: one request of {args.pages} pages, {nbytes / 1e6:.1f} MB out and back in")
    for layout in cases:
        times = {t: [r[f"{layout}/{t}"] for r in used] for t in TRANSFERS}
        row = {t: spread(times[t]) for t in TRANSFERS}
        ratios = {
            f"pages/{t}": spread([a / b for a, b in zip(times["pages"], times[t])])
            for t in ("groups", "gather")
        }
        result["layouts"][layout] = {"seconds": row, "ratios": ratios}
        ms = "  ".join(f"{t} {row[t]['median'] * 1e3:7.2f} ms" for t in TRANSFERS)
        gbs = 2 * nbytes / row["gather"]["median"] / 1e9
        print(f"  {layout:11s} {ms}   (gather {gbs:.2f} GB/s both ways)")
        for k, s in ratios.items():
            print(f"    {k:13s} {fmt_spread(s)}")
    return result


def _model(config):
    from jaxserve.models.transformer import init_model

    return init_model(config)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--pages", type=int, default=64, help="pages of the swapped request")
    p.add_argument("--page_size", type=int, default=16)
    p.add_argument("--run", type=int, default=4, help="pages per run when fragmented")
    p.add_argument("--host_mode", default="auto", choices=["auto", "numpy", "pinned_host"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--budget_s", type=float, default=240.0)
    p.add_argument("--out", default="bench_swap.json")
    args = p.parse_args()
    if args.pages < 1 or args.run < 1:
        p.error("--pages and --run must be >= 1")
    results = {m: bench_model(m, args) for m in args.models.split(",")}
    save_report(args.out, flags=vars(args), results=results, backend=jax.default_backend())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
