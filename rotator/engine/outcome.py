"""What a command did for one client, and the engine's clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Outcome:
    """What one command did for one client."""

    client: str
    ok: bool
    action: str  # rotated | retired | rolled_back | failed | refused | conflict | planned ...
    message: str
    rotation_id: str | None = None
    state: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"client": self.client, "ok": self.ok, "action": self.action,
                "message": self.message, "rotation_id": self.rotation_id,
                "state": self.state, **({"details": self.details} if self.details else {})}




class Abort(Exception):
    """Internal: stop driving a rotation; the journal already says why."""
