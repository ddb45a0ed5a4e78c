"""A Vault KV version 2 path as :class:`~providers.stores.vault.VaultStore` reads it: the
credential in its data, and the facts rotator keeps in its ``custom_metadata`` (the keys
below; the module docstring of :mod:`providers.stores.vault` says what each one means).
"""

from __future__ import annotations

import functools
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rotator.interfaces import Credentials, RotationId, Stage, StoredCredentials, StoreFacts
from rotator.secrets import Secret

RID = "rotator_rotation_id"
PROMOTED_AT = "rotator_promoted_at"
CURRENT_VERSION = "rotator_current_version"
PREVIOUS_VERSION = "rotator_previous_version"
PREVIOUS_RID = "rotator_previous_rotation_id"
OURS = (RID, PROMOTED_AT, CURRENT_VERSION, PREVIOUS_VERSION, PREVIOUS_RID)
#: Kept by every metadata write (not in OURS, which a promotion rewrites).
FENCE = "rotator_fence"


def parse_time(value: object) -> datetime | None:
    with suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None


def creds_of(data: dict[str, Any] | None) -> Credentials | None:
    cid, secret = (data or {}).get("client_id"), (data or {}).get("client_secret")
    if isinstance(cid, str) and isinstance(secret, str):
        return Credentials(cid, Secret(secret))
    return None


def stored_as(
    creds: Credentials | None, stage: Stage, version: object, rid: str | None, at: datetime | None
) -> StoredCredentials | None:
    return None if creds is None else StoredCredentials(creds, stage, str(version), rid, at)


def current_of(entry: Entry) -> StoredCredentials | None:
    rid = entry.current_rid
    at = parse_time(entry.custom.get(PROMOTED_AT)) if rid else None
    return stored_as(entry.creds, Stage.CURRENT, entry.version, rid, at or entry.created)


def facts_of(entry: Entry, staged: Entry) -> StoreFacts:
    rid = entry.current_rid if entry.creds else None
    extra = {"kv_version": str(entry.version)}
    for key in (PREVIOUS_VERSION, PREVIOUS_RID):
        if key in entry.custom:
            extra[key.removeprefix("rotator_")] = entry.custom[key]
    return StoreFacts(
        has_current=entry.creds is not None,
        current_rotation_id=rid,
        current_since=(parse_time(entry.custom.get(PROMOTED_AT)) if rid else None) or entry.created,
        pending_rotation_id=staged.owner if staged.data is not None else None,
        has_pending=staged.data is not None,
        has_previous=entry.custom.get(PREVIOUS_VERSION, "").isdigit(),
        extra=extra,
    )


@dataclass(frozen=True)
class Entry:
    """A KV path as read: latest version (0: no path), its data (None: deleted), metadata."""

    version: int = 0
    data: dict[str, Any] | None = None
    custom: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None

    @functools.cached_property
    def creds(self) -> Credentials | None:
        """The credentials in ``data``, wrapped once per entry: each new Secret costs a
        registration with the redactor, and a rotation asks a read entry several times."""
        return creds_of(self.data)

    @property
    def owner(self) -> RotationId | None:
        """The rotation that staged this pending credential."""
        owner = (self.data or {}).get(RID) or self.custom.get(RID)
        return owner if isinstance(owner, str) else None

    @property
    def current_rid(self) -> RotationId | None:
        """The rotation that wrote the latest version, if the metadata still describes it."""
        described = self.custom.get(CURRENT_VERSION) == str(self.version)
        return self.custom.get(RID) if described else None
