"""Which collection serves a read model: switches only go forward."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from projections.checkpoints import Checkpoint
from projections.readdb import ReadDatabase


def checkpoint(epoch: int, position: int, served: str) -> Checkpoint:
    return Checkpoint(
        "products", position, position, None, None, epoch=epoch, collections={"products": served}
    )


async def test_a_read_from_before_a_switch_never_switches_back() -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(connect=False)
    try:
        db = ReadDatabase(client["shop"])
        assert db["products"].name == "products"
        db.switch([checkpoint(4, 90, "products__g2")])
        db.switch([checkpoint(3, 80, "products__g1")])  # read before the switch, seen after
        assert db["products"].name == "products__g2"
        assert db.get_collection("products").name == "products__g2"
        db.switch([checkpoint(5, 95, "products__g3")])
        assert db["products"].name == "products__g3"
    finally:
        await client.close()
