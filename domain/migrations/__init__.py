"""The write model's migrations (Alembic) and running them on an open connection.

Revisions live in ``versions/`` as ``NNNN_slug.py`` with revision id ``NNNN``, in one
line of history. The server and ``cqrs-shop migrate`` run them through
:func:`upgrade` inside the caller's transaction (``domain.store.create_schema``
takes the lock that lets several processes start at once); ``env.py`` is only
for Alembic's own command line (``alembic revision --autogenerate``), which reads
its settings from ``[tool.alembic]`` in ``pyproject.toml``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError

from domain.model import UTCDateTime

HERE = Path(__file__).parent
# The schema that ``metadata.create_all`` made at every start before there were
# migrations; a database from then has its tables (every release made the outbox)
# but no ``alembic_version``.
BASELINE = "0001"

Report = Callable[[str], None]


class SchemaError(RuntimeError):
    """The write store's schema is not one this release can run on."""


class SchemaTooNew(SchemaError):
    """The write store is at a revision this release does not know: a newer one migrated it."""


class SchemaBehind(SchemaError):
    """The write store needs migrations and starting was told not to run them."""


@dataclass(frozen=True)
class SchemaState:
    """Where a write store's schema stands against this release's migrations."""

    current: str | None  # the revision recorded in the store; None: none recorded
    head: str
    pending: tuple[str, ...]  # what an upgrade would run, oldest first
    # Tables made before migrations (by ``create_all``), with no revision recorded.
    legacy: bool

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.legacy:
            where = "was made before migrations (no revision recorded)"
        else:
            where = f"is at revision {self.current}" if self.current else "is empty"
        return f"the write store {where}; this release needs revision {self.head}"


@functools.cache
def scripts() -> ScriptDirectory:
    """The revisions shipped with this release (read once per process)."""
    return ScriptDirectory(str(HERE))


def head() -> str:
    """The newest revision; raises if history has forked (two heads need a merge)."""
    newest = scripts().get_current_head()
    assert newest is not None, "domain/migrations/versions holds no revision"
    return newest


def context_options(
    dialect_name: str, target_metadata: Sequence[sa.MetaData] = ()
) -> dict[str, Any]:
    """How Alembic compares and renders our schema: one place for the server, the
    command line's autogenerate and the test that models and migrations agree.

    ``target_metadata`` is the schema to compare the store with: every table of the
    write store, the write model's and the relay's (``projections.tables.WRITE_STORE``,
    which ``[tool.alembic]`` names for the command line). Running revisions needs none.
    SQLite alters most things only by copying a table, hence batch mode there.
    """
    return {
        "target_metadata": list(target_metadata) or None,
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "compare_server_default": True,
        "render_item": _render_item,
    }


def _render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    # Revisions hold plain SQLAlchemy types, so they never import the model that they
    # outlive: UTCDateTime only converts values in Python; in the database it is this.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def state(connection: sa.Connection) -> SchemaState:
    """Reads the store's revision; raises :class:`SchemaTooNew` for one it does not know."""
    current = MigrationContext.configure(connection).get_current_heads()
    if len(current) > 1:
        raise SchemaError(f"the write store records several revisions at once: {current}")
    revision = current[0] if current else None
    try:
        steps = scripts().iterate_revisions(head(), revision)
        pending = tuple(reversed([script.revision for script in steps]))
    except ResolutionError as error:
        raise SchemaTooNew(
            f"the write store is at revision {revision}, which this release does not know "
            f"(its newest is {head()}): a newer release migrated it. Run that release, or "
            "restore a backup taken before it migrated."
        ) from error
    legacy = revision is None and sa.inspect(connection).has_table("outbox")
    return SchemaState(current=revision, head=head(), pending=pending, legacy=legacy)


def upgrade(connection: sa.Connection, report: Report | None = None) -> tuple[str, ...]:
    """Runs the pending revisions in the caller's transaction; returns those it ran.

    A database made before migrations runs the baseline too: it creates only the
    tables that are missing (an older release made fewer), which adopts it as
    revision ``0001`` with its rows in place.
    """
    before = state(connection)
    if before.at_head:
        return ()
    say = report or _silent
    say(f"{before.describe()}: running {', '.join(before.pending)}")
    if before.legacy:
        say(f"adopting its tables as revision {BASELINE} (it creates only the missing ones)")
    applied: list[str] = []

    def done(
        ctx: MigrationContext, step: MigrationInfo, heads: Collection[str], run_args: Any
    ) -> None:
        revision = step.up_revision_id or ""
        script = scripts().get_revision(revision)
        applied.append(revision)
        say(f"ran {revision}: {script.doc if script else ''}")

    context = EnvironmentContext(
        Config(),
        scripts(),
        fn=lambda revision, _: scripts()._upgrade_revs(head(), revision),
        destination_rev=head(),
    )
    with context:
        context.configure(
            connection=connection,
            on_version_apply=done,
            **context_options(connection.dialect.name),
        )
        with context.begin_transaction():
            context.run_migrations()
    return tuple(applied)


def _silent(_: str) -> None:
    pass
