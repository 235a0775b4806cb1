"""The write model as create_all made it before there were migrations.

A database from then (tables, no ``alembic_version``) runs this revision too: it
creates only the tables that are missing, since an older release made fewer of them
(``relay_leases`` and ``relay_progress`` came later), and so adopts the database
with its rows in place.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only autoincrements an INTEGER PRIMARY KEY.
Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _missing(table: str) -> bool:
    return context.is_offline_mode() or not sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if _missing("outbox"):
        op.create_table(
            "outbox",
            sa.Column("position", Position, autoincrement=True, nullable=False),
            sa.Column("event_id", sa.String(length=36), nullable=False),
            sa.Column("type", sa.String(length=100), nullable=False),
            sa.Column("aggregate_type", sa.String(length=50), nullable=False),
            sa.Column("aggregate_id", sa.String(length=36), nullable=False),
            sa.Column("aggregate_version", sa.Integer(), nullable=False),
            sa.Column("data", sa.JSON(), nullable=False),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("position"),
            sa.UniqueConstraint(
                "aggregate_id", "aggregate_version", name="uq_outbox_aggregate_version"
            ),
            sa.UniqueConstraint("event_id"),
            sqlite_autoincrement=True,
        )
    if _missing("products"):
        op.create_table(
            "products",
            sa.Column("id", sa.String(length=36), nullable=False),
            sa.Column("sku", sa.String(length=64), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("description", sa.Text(), nullable=False),
            sa.Column("category", sa.String(length=100), nullable=False),
            sa.Column("price_cents", sa.Integer(), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("stock_on_hand", sa.Integer(), nullable=False),
            sa.Column("stock_reserved", sa.Integer(), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.CheckConstraint(
                "stock_reserved >= 0 AND stock_reserved <= stock_on_hand",
                name="ck_products_stock",
            ),
            sa.UniqueConstraint("sku"),
        )
    if _missing("customers"):
        op.create_table(
            "customers",
            sa.Column("id", sa.String(length=36), nullable=False),
            sa.Column("email", sa.String(length=254), nullable=False),
            sa.Column("email_key", sa.String(length=254), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("address", sa.JSON(), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("email_key"),
        )
    if _missing("orders"):
        op.create_table(
            "orders",
            sa.Column("id", sa.String(length=36), nullable=False),
            sa.Column("customer_id", sa.String(length=36), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("total_cents", sa.BigInteger(), nullable=False),
            sa.Column("shipping_address", sa.JSON(), nullable=False),
            sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("tracking_number", sa.String(length=100), nullable=True),
            sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("cancel_reason", sa.String(length=500), nullable=True),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        )
        op.create_index("ix_orders_customer_placed", "orders", ["customer_id", "placed_at"])
    if _missing("order_lines"):
        op.create_table(
            "order_lines",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("line_no", sa.Integer(), nullable=False),
            sa.Column("product_id", sa.String(length=36), nullable=False),
            sa.Column("sku", sa.String(length=64), nullable=False),
            sa.Column("product_name", sa.String(length=200), nullable=False),
            sa.Column("quantity", sa.Integer(), nullable=False),
            sa.Column("unit_price_cents", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("order_id", "line_no"),
            sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
            sa.ForeignKeyConstraint(["product_id"], ["products.id"]),
        )
    if _missing("idempotency_keys"):
        op.create_table(
            "idempotency_keys",
            sa.Column("key", sa.String(length=200), nullable=False),
            sa.Column("command", sa.String(length=100), nullable=False),
            sa.Column("request_hash", sa.String(length=64), nullable=False),
            sa.Column("result", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("key"),
        )
        op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    if _missing("relay_progress"):
        op.create_table(
            "relay_progress",
            sa.Column("id", Position, autoincrement=True, nullable=False),
            sa.Column("body", sa.JSON(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if _missing("relay_leases"):
        op.create_table(
            "relay_leases",
            sa.Column("name", sa.String(length=50), nullable=False),
            sa.Column("owner", sa.String(length=36), nullable=True),
            sa.Column("epoch", sa.BigInteger(), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.Column("handover_to", sa.String(length=36), nullable=True),
            sa.Column("handover_until", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("name"),
        )


def downgrade() -> None:
    for table in (
        "relay_leases", "relay_progress", "idempotency_keys", "order_lines", "orders",
        "customers", "products", "outbox",
    ):  # fmt: skip
        op.drop_table(table)
