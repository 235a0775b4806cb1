"""Every projection the relay maintains: register a new one here, in one line."""

from __future__ import annotations

from projections.audit import AuditTrailProjection
from projections.customers import CustomersProjection
from projections.dashboard import DashboardProjection
from projections.history import OrderHistoryProjection
from projections.orders import OrdersProjection
from projections.products import ProductsProjection
from projections.projection import Projection
from projections.sales import ProductSalesProjection


def all_projections() -> list[Projection]:
    return [
        ProductsProjection(),
        CustomersProjection(),
        OrdersProjection(),
        OrderHistoryProjection(),
        ProductSalesProjection(),
        DashboardProjection(),
        AuditTrailProjection(),
    ]


def projection_names() -> list[str]:
    return [p.name for p in all_projections()]
