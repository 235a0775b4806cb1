"""A P7 client process: opens ``count`` subscriptions to one product and reports when
each change arrives, so 5,000 subscribers are parsed by several processes, not one.

Protocol with the parent (``bench.measures.p7_fanout``), one JSON line each on stdout:
``{"ready": true}`` once every subscription has its first message, then for each of
``changes`` changes ``{"arrivals": [[version, monotonic seconds], ...]}`` once every
subscription has received it (messages already on the socket wait in its buffer).
``time.monotonic`` is one clock for every process of the machine (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from bench.harness import Subscription
from bench.measures import PRODUCT_UPDATED

Arrivals = list[tuple[int, float]]


async def main(url: str, product: str, count: int, changes: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        subscriptions: list[Subscription] = []

        async def subscribe() -> None:
            s = await stack.enter_async_context(
                Subscription.open(url, PRODUCT_UPDATED, {"id": product})
            )
            await s.next()
            subscriptions.append(s)

        for start in range(0, count, 250):
            await asyncio.gather(*(subscribe() for _ in range(min(250, count - start))))

        print(json.dumps({"ready": True}), flush=True)
        for _ in range(changes):
            arrivals: Arrivals = []

            async def receive(s: Subscription, arrivals: Arrivals = arrivals) -> None:
                data = await s.next()
                arrivals.append((int(data["productUpdated"]["version"]), time.monotonic()))

            await asyncio.wait_for(asyncio.gather(*(receive(s) for s in subscriptions)), 300)
            print(json.dumps({"arrivals": arrivals}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("product")
    parser.add_argument("count", type=int)
    parser.add_argument("changes", type=int)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.product, args.count, args.changes))
    sys.exit(0)
