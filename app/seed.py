"""Realistic demo data, written through the real command handlers (so every rule applies)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CancelOrder,
    Command,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    ShipOrder,
)
from domain.errors import DomainError

ADJECTIVES = ["Blue", "Red", "Green", "Classic", "Compact", "Deluxe", "Eco", "Heavy", "Light",
              "Smart", "Vintage", "Wooden", "Steel", "Ceramic", "Cotton", "Organic"]  # fmt: skip
NOUNS = {
    "kitchen": ["Mug", "Pan", "Kettle", "Knife", "Bowl", "Teapot", "Grater"],
    "clothing": ["T-shirt", "Hoodie", "Cap", "Scarf", "Sock pack", "Jacket"],
    "garden": ["Spade", "Hose", "Planter", "Rake", "Watering can"],
    "office": ["Notebook", "Pen set", "Desk lamp", "Stapler", "Backpack"],
    "toys": ["Kite", "Puzzle", "Yo-yo", "Robot kit", "Board game"],
}
FIRST = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Edsger", "Margaret", "Donald", "Frances",
         "Ken", "Radia", "Tim", "Hedy", "John", "Katherine", "Dennis"]  # fmt: skip
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Dijkstra", "Hamilton", "Knuth",
        "Allen", "Thompson", "Perlman", "Berners-Lee", "Lamarr", "McCarthy", "Johnson"]  # fmt: skip
CITIES = [("Berlin", "DE", "10115"), ("Paris", "FR", "75001"), ("Lisbon", "PT", "1100-148"),
          ("Vienna", "AT", "1010"), ("Oslo", "NO", "0150"), ("Dublin", "IE", "D01")]  # fmt: skip


@dataclass
class SeedCounts:
    products: int = 0
    customers: int = 0
    orders: int = 0
    shipped: int = 0
    cancelled: int = 0
    refused: int = 0
    version: int = 0
    """The outbox position of the last event written: read at this minVersion."""


async def seed(
    bus: CommandBus,
    *,
    products: int,
    customers: int,
    orders: int,
    seed: int = 42,
    step: Callable[[], None] = lambda: None,
) -> SeedCounts:
    """Creates the products, customers and orders; ``step()`` is called after each one.

    About 30 % of orders are shipped and 10 % cancelled. An order the rules refuse
    (not enough stock) is tried with other products; after three refusals it is
    counted as ``refused``. The same ``seed`` gives
    the same shop on an empty store.
    """
    rng = random.Random(seed)
    counts = SeedCounts()
    run = f"{rng.randrange(16**6):06x}"
    product_ids: list[str] = []
    customer_ids: list[str] = []

    async def do(command: Command) -> str | None:
        try:
            outcome = await bus.execute(command)
        except DomainError:
            counts.refused += 1
            return None
        counts.version = max(counts.version, outcome.version or 0)
        return outcome.id

    for n in range(products):
        category = rng.choice(list(NOUNS))
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS[category])}"
        command = CreateProduct(
            sku=f"{category[:3].upper()}-{run}-{n:05d}",
            name=name,
            description=f"A {name.lower()} for everyday use.",
            category=category,
            price_cents=rng.randrange(199, 19_999, 50),
            initial_stock=rng.choice([3, 40, 100, 200, 500, 1000, 1000]),
        )
        if product_id := await do(command):
            product_ids.append(product_id)
            counts.products += 1
        step()

    for n in range(customers):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        city, country, postal = rng.choice(CITIES)
        address = AddressData(f"{rng.randrange(1, 200)} Main Street", city, postal, country)
        email = f"{first}.{last}.{run}.{n}@example.com".lower()
        if customer_id := await do(RegisterCustomer(email, f"{first} {last}", address)):
            customer_ids.append(customer_id)
            counts.customers += 1
        step()

    async def place() -> str | None:
        """An order of 1-3 random products; a refused one is tried with others, up to 3 times."""
        for _ in range(3):
            chosen = rng.sample(product_ids, k=min(len(product_ids), rng.randint(1, 3)))
            lines = tuple(OrderLineRequest(p, rng.randint(1, 2)) for p in chosen)
            try:
                outcome = await bus.execute(PlaceOrder(rng.choice(customer_ids), lines))
            except DomainError:
                continue
            counts.version = max(counts.version, outcome.version or 0)
            return outcome.id
        counts.refused += 1
        return None

    for _ in range(orders):
        order_id = await place() if product_ids and customer_ids else None
        if order_id:
            counts.orders += 1
            fate = rng.random()
            if fate < 0.3 and await do(ShipOrder(order_id, f"TRK{rng.randrange(10**9):09d}")):
                counts.shipped += 1
            elif 0.3 <= fate < 0.4 and await do(CancelOrder(order_id, "changed my mind")):
                counts.cancelled += 1
        step()
    return counts
