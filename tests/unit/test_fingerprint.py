"""An idempotency key's stored fingerprint: the same command gives the same one in every
process and after every restart or deploy, or a retry would be refused as another
command (IDEMPOTENCY_KEY_REUSED).

The end-to-end replay tests cannot see a fingerprint that varies per process: their
servers are forked from one process and share its string-hash seed.
"""

from __future__ import annotations

import os
import subprocess
import sys

from domain.commands import CreateProduct, OrderLineRequest, PlaceOrder
from domain.idempotency import fingerprint

PRINT = """
from domain.commands import CreateProduct, OrderLineRequest, PlaceOrder
from domain.idempotency import fingerprint
print(fingerprint(CreateProduct(sku="MUG-1", name="Mug", category="kitchen",
                                price_cents=1299, initial_stock=5)))
print(fingerprint(PlaceOrder("c-1", (OrderLineRequest("p-1", 2),))))
"""

# Keys stored before a deploy are compared with these after it: a change here makes
# every retry of a command within SHOP_IDEMPOTENCY_KEY_DAYS fail, so it must be one on
# purpose (and said in the release notes).
STORED = [
    "3f9bb90879fee205397b773ab56a4c7b2c00858c2da8c0b678f7f89e2d12bc81",
    "d762a6e8e8bbc3fa53855393325fab262dfca97a1f6c31109dc78093e6e2a4b9",
]


def test_a_fingerprint_is_what_keys_stored_before_hold() -> None:
    assert [
        fingerprint(CreateProduct(sku="MUG-1", name="Mug", category="kitchen",
                                  price_cents=1299, initial_stock=5)),
        fingerprint(PlaceOrder("c-1", (OrderLineRequest("p-1", 2),))),
    ] == STORED  # fmt: skip


def test_processes_with_other_hash_seeds_make_the_same_fingerprints() -> None:
    for seed in ("1", "2"):
        printed = subprocess.run(
            [sys.executable, "-c", PRINT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert printed.stdout.split() == STORED, seed
