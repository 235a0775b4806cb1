"""The relay's tables in the write store, beside the write model's (``domain.model``).

They are the projections' business, so they are declared here, on a ``MetaData`` of
their own; the write store's migrations (``domain.migrations``) create both, and
:data:`WRITE_STORE` is the whole schema they must agree with.
"""

from __future__ import annotations

import sqlalchemy as sa

from domain import model
from domain.model import Position

metadata = sa.MetaData()

# The relay's progress feed (projections.signals): one row per batch, read by every
# process that serves reads; pruned by the relay.
relay_progress = sa.Table(
    "relay_progress",
    metadata,
    sa.Column("id", Position, primary_key=True, autoincrement=True),
    sa.Column("body", sa.JSON, nullable=False),
)

# Leases of the relay and of rebuilds (``projections.lease``). They live in the write
# store because its conditional UPDATEs are atomic: FerretDB 1.24 finds a document
# and then replaces it by _id, so a compare-and-set on a Mongo document can let two
# processes in. Times are the database's own clock, in seconds since 1970.
relay_leases = sa.Table(
    "relay_leases",
    metadata,
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("owner", sa.String(36)),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("handover_to", sa.String(36)),
    sa.Column("handover_until", sa.Float, nullable=False),
)

# Every table of the write store: what ``alembic revision --autogenerate`` and the
# migration tests compare the migrated store with ([tool.alembic] target_metadata).
# The write model's includes each feature module's tables (``domain.model.every_table``).
WRITE_STORE: tuple[sa.MetaData, ...] = (model.every_table(), metadata)
