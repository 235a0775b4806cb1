"""What every aggregate shares: its version and the events it has raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from domain.errors import VersionConflict
from domain.events import Event


@dataclass(kw_only=True)
class Aggregate:
    """An aggregate root; ``version`` counts the events applied to it."""

    aggregate_type: ClassVar[str]

    id: str
    version: int = 0
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    def raise_event(self, type_: str, **data: Any) -> None:
        self.version += 1
        self.events.append(Event(type_, self.aggregate_type, self.id, self.version, data))

    def version_conflict(self, expected: int | None) -> VersionConflict | None:
        if expected is None or expected == self.version:
            return None
        return VersionConflict(
            f"{self.aggregate_type} {self.id} is at version {self.version}, not {expected}",
            "expectedVersion",
        )
