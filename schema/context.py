"""What every resolver gets: the process's services and the request's consistency wish."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from graphql import GraphQLError
from strawberry.types import Info as StrawberryInfo

from domain.bus import CommandBus
from domain.identity import ANONYMOUS, Authenticator, Principal
from projections.feeds import Feeds
from projections.progress import Progress
from schema.scalars import INT64
from schema.throttle import Throttles

MIN_VERSION_HEADER = "x-min-version"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused (``schema.policy``) or an admin action not started
    (``AdminActions``): an ``ErrorCode`` name, a message, and the input at fault."""

    code: str
    message: str
    field: str | None = None


class AdminActions(Protocol):
    """What the admin mutations start in this process (``app.admin``)."""

    async def rebuild_projections(self, names: list[str] | None) -> list[Refusal]: ...

    async def resume_projection(self, name: str) -> list[Refusal]: ...


@dataclass
class Context:
    bus: CommandBus
    db: Any
    progress: Progress
    feeds: Feeds
    consistency_timeout: float
    max_page_size: int
    header_min_version: int | None = None
    header_error: str | None = None
    principal: Principal = ANONYMOUS
    # A WebSocket's connection_init payload (set by Strawberry), and what it needs to
    # authenticate the socket then (app.asgi).
    connection_params: dict[str, Any] | None = field(default=None, repr=False)
    authenticator: Authenticator | None = field(default=None, repr=False)
    upgrade_authorization: str | None = field(default=None, repr=False)
    admin: AdminActions | None = field(default=None, repr=False)
    client: str = ""
    """The caller's address: what tells anonymous callers apart (schema.throttle)."""
    request_id: str | None = None
    """The request's (or WebSocket connection's) id, as its logs and ``X-Request-Id``
    carry it: a masked fault names it (``schema.build``)."""
    throttles: Throttles | None = field(default=None, repr=False)
    # Set once the operation passed parsing, validation and variable coercion and began
    # to execute: GraphQL over HTTP answers a request that never got there with a 4xx.
    executed: bool = field(default=False, repr=False)


Info = StrawberryInfo[Context, None]


def parse_min_version_header(value: str | None) -> tuple[int | None, str | None]:
    """The header's version, or the reason it is unusable."""
    if value is None or value.strip() == "":
        return None, None
    text = value.strip()
    number = text.removeprefix("-")
    # ASCII digits only: int() would also take "1_000", "+5" and other scripts' digits
    # (and refuse more than 4,300 digits with an error of its own).
    whole = number.isascii() and number.isdigit()
    if whole and number != text:
        return None, "X-Min-Version must not be negative"
    digits = number.lstrip("0") or "0"
    if not whole or len(digits) > 19 or int(digits) > INT64:
        return None, f"X-Min-Version must be a whole number up to {INT64}, got {value!r}"
    return int(digits), None


def bad_input(
    message: str, *, path: list[str | int] | None = None, **extensions: Any
) -> GraphQLError:
    """A BAD_USER_INPUT error; ``path`` only where graphql-core adds none."""
    return GraphQLError(message, path=path, extensions={"code": "BAD_USER_INPUT", **extensions})
