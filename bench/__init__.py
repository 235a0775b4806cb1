"""Benchmarks: each measure next to its limit, in one run. ``cqrs-shop-bench`` runs them."""
