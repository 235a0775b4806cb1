"""What the read models must say where the write model is the truth, from its rows.

For ``cqrs-shop verify``: per projection, per collection, the fields every document
must hold, by ``_id``; a collection named here must hold exactly these documents.
Only what maps simply is here (no timestamps: the write model's and the events'
clocks are read apart; no order history buckets nor audit trail: the orders model
and the outbox say the same). A new read model that mirrors write-model state adds
its expectation to :data:`EXPECTATIONS`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from domain.snapshot import Row, WriteModelState
from projections.dashboard import DASHBOARD_ID

Fields = dict[str, Any]
Expected = dict[str, dict[Any, Fields]]
"""Per collection, per ``_id``: the fields that document must hold."""


def _kept_orders(state: WriteModelState) -> list[Row]:
    return [o for o in state.orders if o["status"] != "CANCELLED"]


def products(state: WriteModelState) -> Expected:
    return {
        "products": {
            p["id"]: {
                "sku": p["sku"],
                "name": p["name"],
                "description": p["description"],
                "category": p["category"],
                "priceCents": p["price_cents"],
                "status": p["status"],
                "stockOnHand": p["stock_on_hand"],
                "stockReserved": p["stock_reserved"],
                "stockAvailable": p["stock_on_hand"] - p["stock_reserved"],
            }
            for p in state.products
        }
    }


def customers(state: WriteModelState) -> Expected:
    figures: dict[str, Counter[str]] = defaultdict(Counter)
    for order in _kept_orders(state):
        figures[order["customer_id"]]["orderCount"] += 1
        figures[order["customer_id"]]["lifetimeValueCents"] += order["total_cents"]
    return {
        "customers": {
            c["id"]: {
                "email": c["email"],
                "name": c["name"],
                "address": c["address"],
                "orderCount": figures[c["id"]]["orderCount"],
                "lifetimeValueCents": figures[c["id"]]["lifetimeValueCents"],
            }
            for c in state.customers
        }
    }


def orders(state: WriteModelState) -> Expected:
    lines: dict[str, list[Row]] = defaultdict(list)
    for line in sorted(state.order_lines, key=lambda line: line["line_no"]):
        lines[line["order_id"]].append(line)
    return {
        "orders": {
            o["id"]: {
                "customerId": o["customer_id"],
                "status": o["status"],
                "totalCents": o["total_cents"],
                "itemCount": sum(line["quantity"] for line in lines[o["id"]]),
                "shippingAddress": o["shipping_address"],
                "trackingNumber": o["tracking_number"],
                "cancelReason": o["cancel_reason"],
                "lines": [
                    {
                        "productId": line["product_id"],
                        "sku": line["sku"],
                        "productName": line["product_name"],
                        "quantity": line["quantity"],
                        "unitPriceCents": line["unit_price_cents"],
                        "lineTotalCents": line["quantity"] * line["unit_price_cents"],
                    }
                    for line in lines[o["id"]]
                ],
            }
            for o in state.orders
        }
    }


def product_sales(state: WriteModelState) -> Expected:
    kept = {o["id"] for o in _kept_orders(state)}
    sold: dict[str, Counter[str]] = defaultdict(Counter)
    for line in state.order_lines:
        if line["order_id"] in kept:
            figures = sold[line["product_id"]]
            figures["unitsSold"] += line["quantity"]
            figures["revenueCents"] += line["quantity"] * line["unit_price_cents"]
            figures["orderCount"] += 1
    return {
        "product_sales": {
            p["id"]: {
                "sku": p["sku"],
                "name": p["name"],
                "unitsSold": sold[p["id"]]["unitsSold"],
                "revenueCents": sold[p["id"]]["revenueCents"],
                "orderCount": sold[p["id"]]["orderCount"],
            }
            for p in state.products
        }
    }


def dashboard(state: WriteModelState) -> Expected:
    statuses = Counter(o["status"] for o in state.orders)
    counters = {
        "productCount": len(state.products),
        "customerCount": len(state.customers),
        "orderCount": len(state.orders),
        "openOrderCount": statuses["PLACED"],
        "shippedOrderCount": statuses["SHIPPED"],
        "cancelledOrderCount": statuses["CANCELLED"],
        "revenueCents": sum(o["total_cents"] for o in _kept_orders(state)),
    }
    stock = {
        p["id"]: {
            "available": p["stock_on_hand"] - p["stock_reserved"],
            "active": p["status"] == "ACTIVE",
        }
        for p in state.products
    }
    return {"dashboard": {DASHBOARD_ID: counters}, "dashboard_stock": stock}


EXPECTATIONS: dict[str, Callable[[WriteModelState], Expected]] = {
    "products": products,
    "customers": customers,
    "orders": orders,
    "product_sales": product_sales,
    "dashboard": dashboard,
}
"""By projection name."""
