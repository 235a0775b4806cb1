"""The in-process progress view behind minVersion waits and subscriptions."""

from __future__ import annotations

import asyncio

import pytest

from projections.progress import NotYetConsistent, Progress, wait_set


async def test_a_wait_already_met_returns_at_once() -> None:
    progress = Progress()
    progress.advance("products", 7)
    assert await progress.wait_for("products", 5, within=0) == 7


async def test_a_wait_ends_when_the_projection_gets_there() -> None:
    progress = Progress()
    waiter = asyncio.create_task(progress.wait_for("products", 3, within=10))
    await asyncio.sleep(0)
    assert progress.busy
    progress.advance("products", 2)
    await asyncio.sleep(0)
    assert not waiter.done()
    progress.advance("products", 3)
    assert await waiter == 3
    assert not progress.busy


async def test_a_wait_that_is_not_met_says_how_far_it_got() -> None:
    progress = Progress()
    progress.advance("products", 4)
    with pytest.raises(NotYetConsistent) as raised:
        await progress.wait_for("products", 9, within=0.01)
    assert (raised.value.projection, raised.value.min_version) == ("products", 9)
    assert raised.value.current_version == 4


async def test_progress_never_goes_back() -> None:
    progress = Progress()
    progress.advance("products", 5)
    progress.advance("products", 3)
    assert progress.position("products") == 5


async def test_watchers_hear_of_their_own_document_only() -> None:
    progress = Progress()
    async with progress.watch("products", "a") as a, progress.watch("products", "b") as b:
        progress.advance("products", 1, keys={"a"})
        assert a.is_set()
        assert not b.is_set()
        progress.advance("products", 2, keys=None)  # unknown keys: everyone looks
        assert b.is_set()
    assert not progress.busy


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_loop_waiting_on_an_event_ends_when_cancelled_as_the_event_is_set(
    turns: int,
) -> None:
    """asyncio.wait_for swallowed such a cancellation on Python 3.11: the relay's and
    the progress follower's loops then ran on (tests hung at teardown)."""
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await wait_set(event, 60)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=10)
    assert done == {task}
    assert task.cancelled()
