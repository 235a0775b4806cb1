"""The relational write model: normalised state rows, the outbox and idempotency keys.

A feature module of ``domain`` declares its own tables on :data:`metadata`
(``domain.wishlists``); :func:`every_table` is the metadata with all of them. The
relay's tables share the write store but are declared with the relay
(``projections.tables``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

import domain


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores aware UTC datetimes; SQLite drops the offset, so it is put back on read."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only autoincrements an INTEGER PRIMARY KEY.
Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("position", Position, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("aggregate_type", sa.String(50), nullable=False),
    sa.Column("aggregate_id", sa.String(36), nullable=False),
    sa.Column("aggregate_version", sa.Integer, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    # A backstop for optimistic concurrency: one event per aggregate version.
    sa.UniqueConstraint("aggregate_id", "aggregate_version", name="uq_outbox_aggregate_version"),
    sqlite_autoincrement=True,
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("category", sa.String(100), nullable=False),
    sa.Column("price_cents", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("stock_on_hand", sa.Integer, nullable=False),
    sa.Column("stock_reserved", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(
        "stock_reserved >= 0 AND stock_reserved <= stock_on_hand", name="ck_products_stock"
    ),
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(254), nullable=False),
    # Emails are unique case-insensitively; the lower-cased copy carries the constraint.
    sa.Column("email_key", sa.String(254), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("address", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("customer_id", sa.String(36), sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("total_cents", sa.BigInteger, nullable=False),
    sa.Column("shipping_address", sa.JSON, nullable=False),
    sa.Column("placed_at", UTCDateTime, nullable=False),
    sa.Column("shipped_at", UTCDateTime),
    sa.Column("tracking_number", sa.String(100)),
    sa.Column("cancelled_at", UTCDateTime),
    sa.Column("cancel_reason", sa.String(500)),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_orders_customer_placed", "customer_id", "placed_at"),
)

order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("product_id", sa.String(36), sa.ForeignKey("products.id"), nullable=False),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("product_name", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price_cents", sa.Integer, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("command", sa.String(100), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
)


def every_table() -> sa.MetaData:
    """:data:`metadata` with every feature module's tables on it: for what needs the whole
    write model (migrations compared with it, ``create_all`` in tests), whichever
    modules its process imported first."""
    domain.import_every_module()
    return metadata
