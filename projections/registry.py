"""Every projection the relay maintains: register a new one here, in one line."""

from __future__ import annotations

from projections.products import ProductsProjection
from projections.projection import Projection


def all_projections() -> list[Projection]:
    return [ProductsProjection()]
