"""The write side: commands, rules, aggregates, events, the SQL write model and its outbox.

Knows nothing of GraphQL, MongoDB or HTTP.

A feature module of this package (``domain/wishlists.py``) declares its own tables on
``domain.model.metadata`` and registers its own handlers (``domain.handlers.handles``),
so nothing else in the package names it. What needs all of them at once (the whole
schema, every handler) calls :func:`import_every_module` rather than keeping a list.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_every_module() -> None:
    """Imports each module of this package (not the modules of its subpackages), so that
    every feature module's tables and handlers are registered."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
