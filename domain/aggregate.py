"""What every aggregate shares: its version and the events it has raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from domain.errors import VersionConflict
from domain.events import DomainEvent, Event


@dataclass(kw_only=True)
class Aggregate:
    """An aggregate root; ``version`` counts the events applied to it."""

    aggregate_type: ClassVar[str]

    id: str
    version: int = 0
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    def raise_event(self, event: DomainEvent) -> None:
        """Records ``event`` as this aggregate's next version, in its stored form."""
        self.version += 1
        self.events.append(
            Event(event.type_name(), self.aggregate_type, self.id, self.version, event.to_data())
        )

    def version_conflict(self, expected: int | None) -> VersionConflict | None:
        if expected is None or expected == self.version:
            return None
        return VersionConflict(
            f"{self.aggregate_type} {self.id} is at version {self.version}, not {expected}",
            "expectedVersion",
        )
