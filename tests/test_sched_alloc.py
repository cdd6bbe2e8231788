"""Request token and page accounting, and the page allocator (by hand and against a set)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_helpers import req

from jaxserve.sched import OutOfPages, PageAllocator, contiguous_runs

# ------------------------------------------------------------------------ request, allocator


def test_token_and_page_accounting():
    """prompt 5, page_size 4: before prefill no KV and the step needs 5 tokens (2 pages);
    after it one token was sampled, KV of 5 tokens exists, the next step needs 6."""
    r = req("a", 5)
    assert (r.context_len, r.kv_len, r.pages_needed(4)) == (5, 0, 2)
    r.num_generated = 1
    assert (r.context_len, r.kv_len, r.pages_needed(4)) == (6, 5, 2)
    r.num_generated = 4
    assert (r.context_len, r.kv_len, r.pages_needed(4), r.pages_needed(4, 1)) == (9, 8, 3, 3)


def test_allocator_runs_hint_and_errors():
    """10 pages: 1..9 free. a=3 -> [1,2,3]; b=2 -> [4,5]; free a -> runs (1,3), (6,4).
    Best fit: 2 pages come from the 3-run [1,2], not the 4-run. A hint extends a block
    table in place. 5 pages with runs of 1 and 4 come as two runs, largest first."""
    a = PageAllocator(10, 4)
    assert a.num_free == 9 and not a.is_free(0)
    pa = a.allocate(3)
    pb = a.allocate(2)
    assert (pa, pb) == ([1, 2, 3], [4, 5])
    a.free(pa)
    assert a.free_runs() == [(1, 3), (6, 4)]
    assert a.allocate(2) == [1, 2]
    assert a.allocate(1, hint=6) == [6]  # page after a block table ending at 5
    assert a.free_runs() == [(3, 1), (7, 3)]
    assert contiguous_runs(a.allocate(4)) == [(7, 3), (3, 1)]
    with pytest.raises(OutOfPages):
        a.allocate(1)
    a.free([8, 9, 7])
    with pytest.raises(ValueError, match="double free"):
        a.free([8])
    with pytest.raises(ValueError, match="outside"):
        a.free([0])
    a.check()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=40))
def test_allocator_matches_a_set_model(ops):
    """Random allocate/free: pages are never handed out twice, a request that fits in one
    free run is served as one contiguous run, and the runs stay consistent."""
    a = PageAllocator(33, 4)
    owned: list[list[int]] = []
    model = set(range(1, 33))
    for alloc, n in ops:
        if alloc:
            if n > a.num_free:
                with pytest.raises(OutOfPages):
                    a.allocate(n)
                continue
            one_run = max((k for _, k in a.free_runs()), default=0) >= n
            pages = a.allocate(n)
            assert len(pages) == n and set(pages) <= model
            assert not one_run or len(contiguous_runs(pages)) == 1
            model -= set(pages)
            owned.append(pages)
        elif owned:
            pages = owned.pop(n % len(owned))
            a.free(pages)
            model |= set(pages)
        a.check()
        assert set(a.free_pages()) == model
