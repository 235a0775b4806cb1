"""Driving a write transaction's coroutine in the SQLite writer thread."""

from __future__ import annotations

import asyncio

import pytest

from domain.writer import run_inline


async def answer(value: int) -> int:
    async def step() -> int:
        return value

    return await step() + await step()


async def suspends() -> None:
    await asyncio.sleep(0)


def test_a_coroutine_that_never_suspends_runs_to_its_result() -> None:
    assert run_inline(answer(21)) == 42


def test_a_coroutine_that_suspends_is_refused_not_left_half_run() -> None:
    with pytest.raises(RuntimeError, match="waited on something"):
        run_inline(suspends())
