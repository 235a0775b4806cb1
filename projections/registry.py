"""Every projection the relay maintains: register a new one here, in one line."""

from __future__ import annotations

from collections.abc import Sequence

from projections.audit import AuditTrailProjection
from projections.customers import CustomersProjection
from projections.dashboard import DashboardProjection
from projections.history import OrderHistoryProjection
from projections.orders import OrdersProjection
from projections.products import ProductsProjection
from projections.projection import Projection
from projections.sales import ProductSalesProjection
from projections.wishlist import WishlistsProjection


def all_projections() -> list[Projection]:
    return [
        ProductsProjection(),
        CustomersProjection(),
        OrdersProjection(),
        OrderHistoryProjection(),
        ProductSalesProjection(),
        DashboardProjection(),
        AuditTrailProjection(),
        WishlistsProjection(),
    ]


def projection_names() -> list[str]:
    return [p.name for p in all_projections()]


def select(names: Sequence[str] | None) -> tuple[list[Projection], list[str]]:
    """The projections ``names`` names (all for none), and the names it does not know."""
    every = all_projections()
    known = {p.name for p in every}
    return [p for p in every if not names or p.name in names], [
        name for name in names or () if name not in known
    ]
