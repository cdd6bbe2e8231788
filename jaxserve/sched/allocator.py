"""Device page allocator with block groups: free pages kept as sorted contiguous runs.

    free runs  [(1, 7), (12, 3), ...]   (start, length), sorted, never adjacent
    allocate(n, hint) -> page ids, as few contiguous runs as it can
    free(pages)       -> merged back into the runs

Page 0 is the null page (block-table padding, writes of padding tokens): never handed out.
Pages 1 .. num_pages-1 start free.

Why runs (FastSwitch's block groups): a request's pages are contiguous when they can be, so
swapping its KV to host and back is a few large copies instead of one copy per page
(`contiguous_runs` groups a block table for the executor). `allocate` takes, in order:
the run that starts at `hint` (pass the page after the request's last one, so a growing
request stays contiguous), then the smallest run that holds the rest (best fit), else the
largest runs first. Every operation is O(number of free runs).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

NULL_PAGE = 0


class OutOfPages(RuntimeError):
    """More pages were asked for than are free."""


def contiguous_runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Group a block table (in order) into (first page, length) runs of consecutive ids."""
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return runs


class PageAllocator:
    """Free list of device pages as sorted runs. Ownership is tracked by the scheduler."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.num_pages = num_pages  # including the null page
        self.page_size = page_size  # tokens per page
        self._starts: list[int] = [1]  # run starts, sorted
        self._lens: list[int] = [num_pages - 1]  # run lengths, parallel to _starts
        self.num_free = num_pages - 1

    @property
    def capacity(self) -> int:
        """Pages that can ever be owned (all but the null page)."""
        return self.num_pages - 1

    def allocate(self, n: int, hint: int | None = None) -> list[int]:
        """`n` free pages, as few contiguous runs as possible (see the module docstring)."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > self.num_free:
            raise OutOfPages(f"asked for {n} pages, {self.num_free} free")
        out: list[int] = []
        if hint is not None and n:
            i = bisect.bisect_left(self._starts, hint)
            if i < len(self._starts) and self._starts[i] == hint:
                out += self._take(i, min(n, self._lens[i]))
        lens = self._lens
        while len(out) < n:
            rest = n - len(out)
            # best fit: the smallest run that holds the rest (the first of equals, i.e. the
            # lowest start); if none does, the largest run first (the first of equals)
            best = min((k for k in lens if k >= rest), default=0) if rest > 1 else min(lens)
            i = lens.index(best) if best else lens.index(max(lens))
            out += self._take(i, min(rest, lens[i]))
        return out

    def _take(self, i: int, k: int) -> list[int]:
        """Take the first `k` pages of run `i`."""
        start = self._starts[i]
        if k == self._lens[i]:
            del self._starts[i], self._lens[i]
        else:
            self._starts[i] += k
            self._lens[i] -= k
        self.num_free -= k
        return list(range(start, start + k))

    def free(self, pages: Iterable[int]) -> None:
        """Return pages to the pool. Raises on the null page, out-of-range or double frees."""
        for start, length in contiguous_runs(sorted(pages)):
            self._insert(start, length)

    def _insert(self, start: int, length: int) -> None:
        end = start + length
        if start < 1 or end > self.num_pages:
            raise ValueError(f"pages {start}..{end - 1} outside 1..{self.num_pages - 1}")
        i = bisect.bisect_right(self._starts, start)
        if i > 0 and self._starts[i - 1] + self._lens[i - 1] > start:
            raise ValueError(f"double free: page {start} is already free")
        if i < len(self._starts) and self._starts[i] < end:
            raise ValueError(f"double free: page {self._starts[i]} is already free")
        self.num_free += length
        if i > 0 and self._starts[i - 1] + self._lens[i - 1] == start:  # merge left
            i -= 1
            self._lens[i] += length
        else:
            self._starts.insert(i, start)
            self._lens.insert(i, length)
        if i + 1 < len(self._starts) and self._starts[i] + self._lens[i] == self._starts[i + 1]:
            self._lens[i] += self._lens[i + 1]  # merge right
            del self._starts[i + 1], self._lens[i + 1]

    def is_free(self, page: int) -> bool:
        i = bisect.bisect_right(self._starts, page) - 1
        return i >= 0 and page < self._starts[i] + self._lens[i]

    def free_pages(self) -> list[int]:
        return [p for s, n in zip(self._starts, self._lens) for p in range(s, s + n)]

    def free_runs(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._lens))

    def check(self) -> None:
        """Internal consistency: sorted, in range, non-overlapping, merged, count right."""
        prev_end = 1
        for k, (s, n) in enumerate(zip(self._starts, self._lens)):
            if n < 1 or s < prev_end or s + n > self.num_pages or (k and s == prev_end):
                raise AssertionError(f"bad free runs {self.free_runs()}")
            prev_end = s + n
        if sum(self._lens) != self.num_free:
            raise AssertionError(f"num_free {self.num_free} != {sum(self._lens)} in runs")
