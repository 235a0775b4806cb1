"""A feature module of ``domain`` registers its own handlers and tables; what needs all of
them (a bus, the whole write model) finds them though no one imported the module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from domain.aggregate import Aggregate
from domain.bus import CommandBus
from domain.commands import Command, RestockProduct
from domain.handlers import HANDLERS, DuplicateHandler, UnhandledCommand, handles
from domain.uow import UnitOfWork

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Unhandled(Command):
    note: str


@pytest.fixture
async def bus() -> AsyncIterator[CommandBus]:
    engine = create_async_engine("sqlite+aiosqlite://")
    bus = CommandBus(engine, group_commit=False)
    yield bus
    bus.close()
    await engine.dispose()


async def test_a_command_without_a_handler_is_refused_by_name(bus: CommandBus) -> None:
    with pytest.raises(UnhandledCommand, match=r"test_feature_modules\.Unhandled: decorate one"):
        await bus.execute(Unhandled(note="hello"))


def test_a_second_handler_for_a_command_is_refused() -> None:
    async def restock_twice(cmd: RestockProduct, uow: UnitOfWork) -> Aggregate:
        raise NotImplementedError

    with pytest.raises(DuplicateHandler, match="RestockProduct is handled by"):
        handles(RestockProduct)(restock_twice)
    assert HANDLERS[RestockProduct] is not restock_twice


def in_a_fresh_process(program: str) -> str:
    """What ``program`` prints, run where no feature module was imported before it."""
    first = "import sys\nassert 'domain.wishlists' not in sys.modules\n"
    ran = subprocess.run(
        [sys.executable, "-c", first + program], cwd=ROOT, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_a_bus_has_every_feature_modules_handlers_though_none_was_imported() -> None:
    """A process that builds a bus before importing a feature (a CLI command, a worker)
    still handles the feature's commands."""
    printed = in_a_fresh_process(
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "from domain.bus import CommandBus\n"
        "bus = CommandBus(create_async_engine('sqlite+aiosqlite://'))\n"
        "print(sorted(t.__name__ for t in bus.handlers))\n"
    )
    assert "'AddToWishlist'" in printed
    assert "'RemoveFromWishlist'" in printed


def test_the_whole_write_model_has_every_feature_modules_tables() -> None:
    """What migrations are compared with (``projections.tables.WRITE_STORE``)."""
    printed = in_a_fresh_process(
        "from domain.model import every_table\nprint(sorted(every_table().tables))\n"
    )
    assert "'wishlist_items'" in printed
    assert "'wishlists'" in printed
