"""The coalescer behind ``@serve.batch``: fragments submitted while a call runs are merged into the
next call (bounded by ``max_rows``), each caller gets its own rows' results in order, and a failing
call fails only the callers whose rows make it fail (a merged call is retried fragment by
fragment)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from giellm_ray.serve.coalescer import Coalescer


class SlowSquare:
    """A real (thread-run) function that records the calls it got."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()

    def __call__(self, rows: list[int]) -> list[int]:
        self.calls.append(list(rows))
        self.gate.wait(timeout=5)
        if any(r < 0 for r in rows):
            raise ValueError("negative row")
        return [r * r for r in rows]


def test_fragments_merge_while_busy_and_results_split():
    fn = SlowSquare()

    async def main():
        c = Coalescer(fn, max_rows=5)
        first = asyncio.create_task(c.submit([1]))
        await asyncio.sleep(0.05)  # the first call is running (blocked on the gate)
        rest = [asyncio.create_task(c.submit(rows)) for rows in ([2, 3], [4], [5, 6], [7])]
        await asyncio.sleep(0.05)
        fn.gate.set()
        return await first, [await t for t in rest]

    first, rest = asyncio.run(main())
    assert first == [1]
    assert rest == [[4, 9], [16], [25, 36], [49]]
    # [2,3],[4] fit in 5 rows; adding [5,6] would make 5 -> allowed; [7] would make 6 -> next call.
    assert fn.calls == [[1], [2, 3, 4, 5, 6], [7]]


def test_a_failing_call_fails_only_its_callers():
    fn = SlowSquare()
    fn.gate.set()

    async def main():
        c = Coalescer(fn, max_rows=2)
        bad = asyncio.create_task(c.submit([-1, 2]))
        good = asyncio.create_task(c.submit([3]))
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and good == [9]


def test_oversized_fragment_still_runs_alone():
    fn = SlowSquare()
    fn.gate.set()
    assert asyncio.run(Coalescer(fn, max_rows=2).submit([1, 2, 3])) == [1, 4, 9]
    with pytest.raises(ValueError):
        asyncio.run(Coalescer(fn, max_rows=2).submit([-3]))


def test_a_merged_call_that_fails_is_retried_per_fragment():
    fn = SlowSquare()

    async def main():
        c = Coalescer(fn, max_rows=8)
        first = asyncio.create_task(c.submit([1]))
        await asyncio.sleep(0.05)  # the first call is running: the next three get merged
        rest = [asyncio.create_task(c.submit(rows)) for rows in ([2, 3], [-4], [5])]
        await asyncio.sleep(0.05)
        fn.gate.set()
        return await first, await asyncio.gather(*rest, return_exceptions=True)

    first, (a, bad, b) = asyncio.run(main())
    assert first == [1] and a == [4, 9] and b == [25]
    assert isinstance(bad, ValueError)
    # One merged call failed on the negative row, then each fragment ran alone.
    assert fn.calls == [[1], [2, 3, -4, 5], [2, 3], [-4], [5]]
