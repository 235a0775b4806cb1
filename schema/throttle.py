"""Per-client limits on what anonymous callers can make the server do.

An anonymous caller is known only by its address (``request.client``; behind a proxy,
uvicorn's ``FORWARDED_ALLOW_IPS`` makes that the original client's). Two things cost
the server more than a plain read, so each has a budget per address:

- **sign-ups** (``registerCustomer``): a token bucket, ``SHOP_ANONYMOUS_SIGNUPS_PER_MINUTE``
  with a burst of ``SHOP_ANONYMOUS_SIGNUP_BURST``. It also slows anyone probing which
  emails are registered (``DUPLICATE``) to that rate.
- **minVersion waits** held at once (``SHOP_ANONYMOUS_WAITS_PER_CLIENT``): each holds a
  request open for up to ``SHOP_CONSISTENCY_TIMEOUT``.

Callers with a valid token are not limited here: they are known, and the policy decides
what they may do. The tables of addresses are bounded (least recently seen out), so a
caller with many addresses costs memory no more than :data:`MAX_CLIENTS` entries.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_CLIENTS = 10_000


class Throttled(Exception):
    """Over a per-client budget; ``retry_after`` seconds until it allows one more."""

    def __init__(self, setting: str, maximum: float, retry_after: float) -> None:
        super().__init__(setting)
        self.setting = setting
        self.maximum = maximum
        self.retry_after = retry_after


class RateLimit:
    """A token bucket per client: ``burst`` at once, then ``per_minute``."""

    def __init__(
        self,
        setting: str,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.setting = setting
        self.per_second = per_minute / 60
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> None:
        """Spends one of ``client``'s tokens, or raises :class:`Throttled`."""
        now = self.clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - then) * self.per_second)
        if tokens < 1:
            self._remember(client, tokens, now)
            wait = (1 - tokens) / self.per_second if self.per_second else float("inf")
            raise Throttled(self.setting, self.per_second * 60, wait)
        self._remember(client, tokens - 1, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)


class ConcurrencyLimit:
    """At most ``most`` things at once per client."""

    def __init__(self, setting: str, most: int) -> None:
        self.setting = setting
        self.most = most
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        held = self._held.get(client, 0)
        if held >= self.most:
            raise Throttled(self.setting, self.most, 0.0)
        self._held[client] = held + 1
        try:
            yield
        finally:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]  # only clients with something held are kept


@dataclass(frozen=True)
class Throttles:
    """The process's per-client limits for anonymous callers."""

    signups: RateLimit
    waits: ConcurrencyLimit

    @classmethod
    def of(cls, signups_per_minute: float, signup_burst: int, waits: int) -> Throttles:
        return cls(
            RateLimit("SHOP_ANONYMOUS_SIGNUPS_PER_MINUTE", signups_per_minute, signup_burst),
            ConcurrencyLimit("SHOP_ANONYMOUS_WAITS_PER_CLIENT", waits),
        )
