"""HashiCorp Vault or OpenBao KV version 2 as a secret store (through hvac).

A client's location is a KV path ``P`` under ``mount``; a consumer running ``bao kv get P``
always sees a working credential:

``CURRENT``
    The latest version of ``P``: ``{"client_id": ..., "client_secret": ...}``; other keys in
    the data are kept on every write. A soft-deleted latest version reads as none.
``PENDING``
    The latest version of the sibling path ``P.pending``. Its data holds the credential and
    ``rotator_rotation_id``: only data writes are checked-and-set, so the data alone says
    atomically whose credential it is (older versions of rotator also put the id in its
    ``custom_metadata``, which is still read). Discarding deletes the sibling's metadata and
    all its versions.
``PREVIOUS``
    An older version of ``P``, named in ``P``'s ``custom_metadata``:

    ================================  ===================================================
    ``rotator_rotation_id``           rotation that wrote CURRENT
    ``rotator_promoted_at``           when it did (ISO 8601, UTC)
    ``rotator_current_version``       the version it wrote; the facts hold while it is latest
    ``rotator_previous_version``      the PREVIOUS version; absent when none or dropped
    ``rotator_previous_rotation_id``  rotation that wrote PREVIOUS, if rotator did
    ``rotator_fence``                 highest fencing token a daemon's write brought
    ================================  ===================================================

    KV refuses empty metadata values, so a cleared fact is a missing key. Nothing here limits
    or destroys versions.

Every data write passes ``cas`` = the version read before (0 to create), so two writers
cannot clobber each other; a failed check-and-set raises ``StoreConflict``. ``promote``
writes ``P``, then ``P``'s metadata, then deletes ``P.pending``; after a crash between any
two of these a retried ``promote`` finishes the job.

A write carrying a fencing token (a daemon job holding the client's lease, see docs/ha.md)
first reads ``P`` afresh (one request, which the write then starts from instead of a
remembered read) and raises ``FencedOut`` if its ``rotator_fence`` is higher than the
write's token; if lower, it records the token there (one metadata write per new holder)
before writing anything else. The check and the write are separate requests, since KV
metadata has no check-and-set; but every data write that follows is checked-and-set against
that read, so a newer holder's data write in between still makes it fail.

Requests: one read of a path (``GET data/P``) brings its data, version and custom metadata.
The writes of a rotation (stage, promote, drop) start from the store's last read or write of
a path if it is at most ``_MEMO_SECONDS`` old instead of reading it again; that is safe
because every data write is checked-and-set: if the path changed since, the write fails with
``StoreConflict`` and is forgotten, so the engine's next attempt starts from a fresh read.
``read`` and ``facts`` always ask Vault. ``stage_pending`` writes ``P.pending`` with
``cas`` = 0 without reading it first (rotator leaves no versions there), and reads it only
when that fails, to tell its own earlier attempt from a foreign credential.
``write_current`` (single-secret rotations) writes ``P`` and its metadata without a pending
copy or PREVIOUS; ``promote`` of that rotation then does nothing.

The hvac client (its session, the login, the translation of hvac's and requests' errors) is
in :mod:`providers.stores.vault_http`; a KV path as read, and the metadata keys above, in
:mod:`providers.stores.vault_kv`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from providers.stores.vault_http import VaultConnection
from providers.stores.vault_kv import (
    CURRENT_VERSION,
    FENCE,
    OURS,
    PREVIOUS_RID,
    PREVIOUS_VERSION,
    PROMOTED_AT,
    RID,
    Entry,
    creds_of,
    current_of,
    facts_of,
    parse_time,
    stored_as,
)
from rotator.errors import StoreAccessDenied, StoreConflict, StoreError
from rotator.interfaces import (
    Credentials,
    Location,
    RotationId,
    Stage,
    StoredCredentials,
    StoreFacts,
)
from rotator.journal.fencing import recorded_fence, refuse_stale
from rotator.settings import Setting

#: Packages this adapter needs, imported on first use (so ``config check`` loads none of
#: them); the registry checks that they are installed.
REQUIRES = ("hvac", "requests")

#: How long a path as last read or written may stand in for a fresh read before a write.
_MEMO_SECONDS = 30.0


def _mount_problem(mount: str) -> str | None:
    """Why ``mount`` is not a plain mount path such as ``secret`` or ``team/kv``, or None.

    One trailing '/' is accepted (Vault lists mounts as ``secret/``) and dropped.
    """
    if any(c in mount for c in "?#%\\") or not mount.isprintable() or any(
            c.isspace() for c in mount):
        return "must not contain '?', '#', '%', '\\', spaces or control characters"
    path = mount[:-1] if mount.endswith("/") else mount
    if any(seg in ("", ".", "..") for seg in path.split("/")):
        return ("must be a mount path such as secret or team/kv: no empty, '.' or '..' "
                "segments, no leading '/' and at most one trailing '/'")
    return None


class VaultStore(VaultConnection):
    """Credentials in a Vault or OpenBao KV v2 mount, with PREVIOUS kept as an old version."""

    LOCATION_KEY = "path"
    SETTINGS: tuple[Setting, ...] = (
        Setting("url", required=True, help="Vault address, e.g. https://vault:8200"),
        Setting("mount", default="secret", help="KV version 2 mount point"),
        Setting("namespace", help="Vault Enterprise / OpenBao namespace"),
        Setting("auth", default="token", choices=("token", "approle")),
        Setting("token", secret=True, help="Vault token"),
        Setting("role_id", help="AppRole role id"),
        Setting("secret_id", secret=True, help="AppRole secret id"),
        Setting("approle_mount", default="approle"),
        Setting("tls_verify", "bool", default=True),
        Setting("ca_file", "path", help="CA bundle for Vault's TLS certificate"),
        Setting("timeout", "duration", default=10.0),
    )

    @staticmethod
    def validate_location(location: Location) -> str | None:
        """Why ``location`` is not a plain KV path under the mount, or None when it is."""
        if any(c in location for c in "?#%\\") or not location.isprintable():
            return "must not contain '?', '#', '%', '\\' or control characters"
        segments = location.split("/")
        if any(seg in ("", ".", "..") for seg in segments):
            return ("must be a KV path such as apps/payments: no empty, '.' or '..' segments, "
                    "no leading or trailing '/'")
        if location.endswith(".pending"):
            return "must not end in '.pending': that is where a pending credential is staged"
        return None

    @staticmethod
    def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The mounts become parts of request paths: refuse any that would leave theirs."""
        problems = []
        for key in ("mount", "approle_mount"):
            value = settings.get(key)
            reason = _mount_problem(value) if isinstance(value, str) else None
            if reason:
                problems.append((key, reason))
        return problems

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        super().__init__(name, settings)
        # path -> (monotonic time, entry): the last read or write of each path (see above).
        self._memo: dict[str, tuple[float, Entry]] = {}
        #: (path, rotation id) pairs this process wrote as CURRENT with ``write_current``.
        self._direct: set[tuple[str, RotationId]] = set()

    def __enter__(self) -> VaultStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._memo.clear()
        super().close()

    # -- KV v2 ----------------------------------------------------------------------------

    def _paths(self, location: Location) -> tuple[str, str]:
        problem = self.validate_location(location)
        if problem:
            raise StoreError(f"vault store {self.name!r}: location {location!r} {problem}")
        return location, location + ".pending"

    def _version(self, path: str, version: int) -> tuple[dict[str, Any] | None, datetime | None]:
        answer = self._call("GET", f"{self._mount}/data/{path}?version={version}", "read")
        body = (answer or {}).get("data") or {}
        return body.get("data"), parse_time((body.get("metadata") or {}).get("created_time"))

    def _latest(self, path: str, *, memo: bool = False) -> Entry:
        """``path`` as it is now (one request), or with ``memo`` as last seen, if recently."""
        seen = self._memo.get(path)
        if memo and seen is not None and time.monotonic() - seen[0] <= _MEMO_SECONDS:
            return seen[1]
        answer = self._call("GET", f"{self._mount}/data/{path}", "read", body_of_404=True)
        body = (answer or {}).get("data") or {}
        meta = body.get("metadata") or {}
        data = body.get("data")
        return self._remember(path, Entry(
            int(meta.get("version") or 0), data if isinstance(data, dict) else None,
            dict(meta.get("custom_metadata") or {}), parse_time(meta.get("created_time"))))

    def _remember(self, path: str, entry: Entry) -> Entry:
        self._memo[path] = (time.monotonic(), entry)
        return entry

    def _write(self, path: str, data: dict[str, Any], cas: int) -> int:
        body = {"data": data, "options": {"cas": cas}}
        try:
            answer = self._call("POST", f"{self._mount}/data/{path}", "create/update", body)
        except StoreError:
            self._memo.pop(path, None)
            raise
        version = int(((answer or {}).get("data") or {}).get("version") or cas + 1)
        seen = self._memo.get(path)
        custom = seen[1].custom if seen else {}
        self._remember(path, Entry(version, data, custom, datetime.now(UTC)))
        return version

    def _set_custom(self, path: str, entry: Entry, custom: dict[str, str]) -> None:
        self._memo.pop(path, None)
        self._call("POST", f"{self._mount}/metadata/{path}", "update", {"custom_metadata": custom})
        self._remember(path, Entry(entry.version, entry.data, custom, entry.created))

    def _delete(self, path: str) -> None:
        self._memo.pop(path, None)
        self._call("DELETE", f"{self._mount}/metadata/{path}", "delete")
        self._remember(path, Entry())

    def _fenced(self, location: Location, main: str, fence: int | None) -> None:
        """Refuse a write carrying an older ``fence`` than ``main`` records; record a newer
        one. Reads ``main`` afresh, so the write that follows starts from this read."""
        if fence is None:
            return
        entry = self._latest(main)
        custom = entry.custom
        if entry.version == 0:  # no version: GET data shows no metadata; it may still exist
            answer = self._call("GET", f"{self._mount}/metadata/{main}", "read") or {}
            custom = dict((answer.get("data") or {}).get("custom_metadata") or {})
        recorded = recorded_fence(custom.get(FENCE))
        refuse_stale(f"vault store {self.name!r}: {location!r} (custom metadata {FENCE} of "
                     f"{main})", recorded, fence)
        if recorded is None or fence > recorded:
            self._set_custom(main, replace(entry, custom=custom),
                             {**custom, FENCE: str(fence)})

    # -- SecretStore ----------------------------------------------------------------------

    def read(self, location: Location, stage: Stage = Stage.CURRENT) -> StoredCredentials | None:
        main, pending = self._paths(location)
        if stage is Stage.PENDING:
            entry = self._latest(pending)
            return stored_as(entry.creds, stage, entry.version, entry.owner, None)
        entry = self._latest(main)
        if stage is Stage.CURRENT:
            return current_of(entry)
        previous = entry.custom.get(PREVIOUS_VERSION, "")
        if not previous.isdigit():
            return None
        data, created = self._version(main, int(previous))
        return stored_as(creds_of(data), stage, previous, entry.custom.get(PREVIOUS_RID), created)

    def facts(self, location: Location) -> StoreFacts:
        main, pending = self._paths(location)
        return facts_of(self._latest(main), self._latest(pending))

    def read_with_facts(self, location: Location) -> tuple[StoredCredentials | None, StoreFacts]:
        """The CURRENT credential and the location's facts, from one read of each path."""
        main, pending = self._paths(location)
        entry = self._latest(main)
        return current_of(entry), facts_of(entry, self._latest(pending))

    def check_writable(self, location: Location) -> None:
        main, pending = self._paths(location)
        exists, m = self._latest(main, memo=True).version > 0, self._mount
        needed = {
            f"{m}/data/{main}": ("read", "update" if exists else "create"),
            f"{m}/metadata/{main}": ("read", "update"),
            f"{m}/data/{pending}": ("read", "create", "update"),
            f"{m}/metadata/{pending}": ("read", "update", "delete"),
        }
        body = {"paths": list(needed)}
        answer = self._call("POST", "sys/capabilities-self", "update", body) or {}
        caps = answer.get("data") or answer
        have = {path: set(caps.get(path) or ()) for path in needed}
        missing = [
            f"{', '.join(c for c in want if c not in have[path])} on {path}"
            for path, want in needed.items()
            if "root" not in have[path] and not have[path].issuperset(want)
        ]
        if missing:
            raise StoreAccessDenied(
                f"vault store {self.name!r}: the token cannot rotate "
                f"{location!r}: it lacks {'; '.join(missing)}"
            )

    def stage_pending(
        self,
        location: Location,
        credentials: Credentials,
        rotation_id: RotationId,
        *,
        replace_foreign: bool = False,
        fence: int | None = None,
    ) -> None:
        main, pending = self._paths(location)
        self._fenced(location, main, fence)
        secret = credentials.client_secret.reveal()
        data = {"client_id": credentials.client_id, "client_secret": secret, RID: rotation_id}
        if pending not in self._memo and not replace_foreign:
            # No read first: a pending path rotator left has no versions (it deletes the
            # metadata), so a write with cas=0 creates it; anything there makes it fail.
            try:
                self._write(pending, data, cas=0)
                return
            except StoreConflict:
                pass  # something is there: look at whose it is
        entry = self._latest(pending, memo=True)
        if entry.data is not None and entry.owner != rotation_id and not replace_foreign:
            raise StoreConflict(
                f"vault store {self.name!r}: {location!r} holds a pending credential of "
                f"rotation {entry.owner or '(unknown)'}; rotation {rotation_id} will not "
                "replace it"
            )
        self._write(pending, data, cas=entry.version)

    def write_current(
        self, location: Location, credentials: Credentials, rotation_id: RotationId, *,
        fence: int | None = None,
    ) -> None:
        """Write ``credentials`` as CURRENT for ``rotation_id`` at once, keeping no PREVIOUS.

        For single-secret rotations (see ``SecretStore``): one data write and one metadata
        write, no pending copy. Idempotent; ``StoreConflict`` if ``P`` changed since read.
        """
        main, _ = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(main, memo=True)
        if entry.current_rid == rotation_id and entry.creds == credentials:
            self._direct.add((main, rotation_id))
            return
        if entry.creds == credentials:  # crashed after writing the data: the version is ours
            new, data = entry.version, entry.data or {}
        else:
            secret = credentials.client_secret.reveal()
            data = {**(entry.data or {}), "client_id": credentials.client_id,
                    "client_secret": secret}
            new = self._write(main, data, cas=entry.version)
        meta = {k: v for k, v in entry.custom.items() if k not in OURS}
        meta.update({RID: rotation_id, CURRENT_VERSION: str(new),
                     PROMOTED_AT: datetime.now(UTC).isoformat()})
        self._set_custom(main, Entry(new, data, entry.custom, entry.created), meta)
        self._direct.add((main, rotation_id))

    def promote(self, location: Location, rotation_id: RotationId, *,
                fence: int | None = None) -> None:
        main, pending = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(main, memo=True)
        if (main, rotation_id) in self._direct and entry.current_rid == rotation_id:
            self._direct.discard((main, rotation_id))
            return  # written CURRENT directly by this process: no pending copy to remove
        staged_entry = self._latest(pending, memo=True)
        current = entry.creds
        staged = staged_entry.creds if staged_entry.owner == rotation_id else None
        if current is not None and entry.current_rid == rotation_id:
            if staged is not None:  # crashed after the metadata update
                self._delete(pending)
            return
        if staged is None:
            raise StoreConflict(
                f"vault store {self.name!r}: {location!r} has no pending credential of "
                f"rotation {rotation_id}, and its current one belongs to "
                f"{entry.current_rid or 'no known rotation'}"
            )
        if current == staged:  # crashed after writing the data: the latest version is ours
            new, before, data = entry.version, entry.version - 1, entry.data or {}
            had_creds = before > 0 and creds_of(self._version(main, before)[0]) is not None
        else:
            secret = staged.client_secret.reveal()
            data = {**(entry.data or {}), "client_id": staged.client_id, "client_secret": secret}
            new = self._write(main, data, cas=entry.version)
            before, had_creds = entry.version, current is not None
        meta = {k: v for k, v in entry.custom.items() if k not in OURS}
        meta.update({RID: rotation_id, CURRENT_VERSION: str(new),
                     PROMOTED_AT: datetime.now(UTC).isoformat()})
        if had_creds:
            meta[PREVIOUS_VERSION] = str(before)
        if had_creds and entry.custom.get(CURRENT_VERSION) == str(before) and RID in entry.custom:
            meta[PREVIOUS_RID] = entry.custom[RID]
        self._set_custom(main, Entry(new, data, entry.custom, entry.created), meta)
        self._delete(pending)

    def discard_pending(self, location: Location, rotation_id: RotationId, *,
                        fence: int | None = None) -> None:
        main, pending = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(pending)
        if entry.version and entry.owner == rotation_id:
            self._delete(pending)

    def drop_previous(self, location: Location, rotation_id: RotationId, *,
                      fence: int | None = None) -> None:
        main, _ = self._paths(location)
        self._fenced(location, main, fence)
        entry = self._latest(main, memo=True)
        if entry.current_rid == rotation_id and PREVIOUS_VERSION in entry.custom:
            self._set_custom(main, entry, {k: v for k, v in entry.custom.items()
                                           if k != PREVIOUS_VERSION})
