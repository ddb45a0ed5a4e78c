"""Environment variables and env files (dotenv format) as a secret store.

A client's location is a variable prefix ``P``. Its credential is the pair ``P_CLIENT_ID`` /
``P_CLIENT_SECRET``: what services that take credentials from their environment read. The
other stages and the rotation facts sit beside it in the same file:

==============================  =========================================
``P_CLIENT_ID``                 client id (CURRENT)
``P_CLIENT_SECRET``             CURRENT secret
``P_CLIENT_SECRET_PENDING``     PENDING secret, during a rotation
``P_PENDING_ROTATION_ID``       rotation that wrote PENDING
``P_CLIENT_SECRET_PREVIOUS``    PREVIOUS secret, until the IdP retires it
``P_PREVIOUS_ROTATION_ID``      rotation that wrote PREVIOUS
``P_ROTATION_ID``               rotation that wrote CURRENT
``P_ROTATED_AT``                when CURRENT was promoted (ISO 8601, UTC)
``P_ROTATION_FENCE``            highest fencing token a daemon's write brought
==============================  =========================================

A write carrying a fencing token (a daemon job holding the client's lease, see docs/ha.md)
compares it with ``P_ROTATION_FENCE`` under the file's lock and, when it is older, raises
``FencedOut`` and writes nothing; otherwise the file it writes records the higher token.
The check and the write are one step under the lock, so no stale writer slips between.

With ``file`` set, the store reads and writes that file: every write replaces it atomically
(temporary file, fsync, rename) with mode 0600 under an exclusive lock, keeping every other
line as it was. Without ``file`` the store reads the process environment and refuses writes.

A file may be sourced by a shell (``set -a; . file``), so values are written in single
quotes, where the shell expands nothing, and lines are split on ``\n`` only (the format:
:mod:`providers.stores.dotenv`). The store refuses to write a client id or secret that is
not printable ASCII without spaces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from providers.stores.dotenv import parse_env, render_env
from rotator._files import UnsafeFile, open_private, write_private_file
from rotator.errors import StoreAccessDenied, StoreConflict, StoreError, StoreUnavailable
from rotator.interfaces import (
    Credentials,
    Location,
    RotationId,
    Stage,
    StoredCredentials,
    StoreFacts,
)
from rotator.journal.fencing import recorded_fence, refuse_stale
from rotator.secrets import Secret, check_secret_value
from rotator.settings import Setting

__all__ = ["EnvStore", "UnsafeValue", "parse_env", "render_env"]

_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: How often a writer waiting for another's lock tries again, in seconds.
_LOCK_POLL = 0.05


class UnsafeValue(StoreError):
    """A client id or secret cannot be written to an env file safely; nothing was written."""


def _temp_path(path: Path) -> Path:
    """The one temporary file a write of ``path`` uses: a fixed name, so the next writer
    finds and removes what a killed one left."""
    return path.with_name(f".{path.name}.rotator-tmp")


def _leftovers(path: Path) -> list[Path]:
    """Temporary copies of ``path`` that killed writers left: this writer's, and the
    ``.<name>.<random>.tmp`` files earlier versions of rotator wrote."""
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return [path.parent / name for name in names
            if name == _temp_path(path).name or legacy.match(name)]


def _sweep(path: Path) -> None:
    """Remove leftovers of ``path`` that are this user's regular files (under the lock)."""
    for leftover in _leftovers(path):
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(leftover)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                os.unlink(leftover)


def _replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600; call under the store lock.

    The temporary file is created exclusively and without following a symlink; a crash
    leaves either the old or the new file, whole, and at most the temporary file, which
    the next write (or the store's start) removes.
    """
    write_private_file(path, data, tmp=_temp_path(path))


class EnvStore:
    """Credentials in environment variables, written to a dotenv file."""

    LOCATION_KEY = "prefix"
    SETTINGS = (
        Setting("file", "path", help="dotenv file to read and write; omit to read the "
                                    "process environment only"),
        Setting("read_environ", "bool", default=True,
                help="read the process environment for variables the file lacks"),
        Setting("lock_timeout", "duration", default=30.0,
                help="how long a write waits for another process holding the file's lock"),
    )

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self._file = Path(settings["file"]) if settings.get("file") else None
        self._read_environ = bool(settings.get("read_environ", True))
        timeout = settings.get("lock_timeout")
        self._lock_timeout = 30.0 if timeout is None else float(timeout)
        self._parsed: tuple[tuple[int, ...], dict[str, str]] | None = None

    def start(self) -> None:
        if self._file is not None and not self._file.parent.is_dir():
            raise StoreUnavailable(
                f"store {self.name!r}: directory {self._file.parent} does not exist"
            )
        if self._file is not None and _leftovers(self._file):
            # A writer killed mid-write left a copy of the file; remove it now rather than
            # at the next write. Best effort: a reader may not hold the directory's rights.
            with contextlib.suppress(StoreError), self._locked():
                pass

    def close(self) -> None:
        return None

    # -- reading ---------------------------------------------------------------------------

    def _read_file(self, path: Path) -> str:
        """The file's text ("" if missing), opened without following a symlink."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreUnavailable(f"store {self.name!r}: {path} is a symbolic link; "
                                       "refusing to follow it: point 'file' at the real "
                                       "file") from None
            raise StoreUnavailable(f"store {self.name!r}: cannot read {path}: "
                                   f"{exc.strerror}") from exc
        try:
            with os.fdopen(fd, "rb") as handle:
                return handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreUnavailable(f"store {self.name!r}: cannot read {path}: "
                                   f"{exc}") from exc

    def _values(self) -> Mapping[str, str]:
        """The file's variables, then (if read) the environment's; nothing is copied."""
        environ: MutableMapping[str, str] = os.environ if self._read_environ else {}
        return ChainMap(self._file_values(), environ)

    def _file_values(self) -> dict[str, str]:
        """The file parsed, once per version of it: ``status --all`` asks once per client.

        A version is known by inode, size and change times; rotator's own writes replace
        the file, so they always make a new one.
        """
        if self._file is None:
            return {}
        try:
            st = os.lstat(self._file)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreUnavailable(f"store {self.name!r}: cannot read {self._file}: "
                                   f"{exc.strerror}") from exc
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, parse_env(self._read_file(self._file)))
        return self._parsed[1]

    @staticmethod
    def validate_location(prefix: Location) -> str | None:
        """Why ``prefix`` cannot name variables, or None when it can."""
        if not _PREFIX.fullmatch(prefix):  # match() would let a trailing newline through
            return "must be letters, digits and '_', not starting with a digit"
        return None

    @classmethod
    def _names(cls, prefix: Location) -> dict[str, str]:
        problem = cls.validate_location(prefix)
        if problem:
            raise StoreError(f"env prefix {prefix!r} {problem}")
        return {
            "id": f"{prefix}_CLIENT_ID",
            "current": f"{prefix}_CLIENT_SECRET",
            "pending": f"{prefix}_CLIENT_SECRET_PENDING",
            "pending_rid": f"{prefix}_PENDING_ROTATION_ID",
            "previous": f"{prefix}_CLIENT_SECRET_PREVIOUS",
            "previous_rid": f"{prefix}_PREVIOUS_ROTATION_ID",
            "rid": f"{prefix}_ROTATION_ID",
            "at": f"{prefix}_ROTATED_AT",
            "fence": f"{prefix}_ROTATION_FENCE",
        }

    def read(self, location: Location, stage: Stage = Stage.CURRENT, *,
             values: Mapping[str, str] | None = None) -> StoredCredentials | None:
        n = self._names(location)
        v = self._values() if values is None else values
        client_id = v.get(n["id"])
        secret = v.get(n[stage.value])
        if not client_id or not secret:
            return None
        rid_key = {Stage.CURRENT: "rid", Stage.PENDING: "pending_rid",
                   Stage.PREVIOUS: "previous_rid"}[stage]
        promoted_at = _promoted_at(v.get(n["at"])) if stage is Stage.CURRENT else None
        return StoredCredentials(
            Credentials(client_id, Secret(secret)), stage,
            rotation_id=v.get(n[rid_key]) or None, promoted_at=promoted_at,
        )

    def facts(self, location: Location) -> StoreFacts:
        n = self._names(location)
        v = self._values()
        # From the parsed values, without wrapping the secret: a daemon asks this of every
        # client at start, and a Secret costs its redactor registration.
        has_current = bool(v.get(n["id"]) and v.get(n["current"]))
        return StoreFacts(
            has_current=has_current,
            current_rotation_id=v.get(n["rid"]) or None,
            current_since=_promoted_at(v.get(n["at"])) if has_current else None,
            pending_rotation_id=v.get(n["pending_rid"]) if v.get(n["pending"]) else None,
            has_pending=bool(v.get(n["pending"])),
            has_previous=bool(v.get(n["previous"])),
            extra={"file": str(self._file)} if self._file else {"source": "environment"},
        )

    # -- writing ---------------------------------------------------------------------------

    def _require_file(self) -> Path:
        if self._file is None:
            raise StoreAccessDenied(
                f"store {self.name!r} reads the process environment only; set 'file' to let "
                "rotator write credentials"
            )
        return self._file

    @contextmanager
    def _locked(self) -> Iterator[tuple[str, dict[str, str]]]:
        path = self._require_file()
        lock_path = path.with_name(f"{path.name}.lock")
        try:
            lock = open_private(lock_path, os.O_CREAT | os.O_RDWR)
        except UnsafeFile as exc:
            raise StoreAccessDenied(f"store {self.name!r}: cannot lock {path}: {exc}") from None
        except OSError as exc:
            raise StoreUnavailable(f"store {self.name!r}: cannot lock {path}: "
                                   f"{exc.strerror}") from exc
        try:
            self._acquire(lock, lock_path)
            _sweep(path)
            text = self._read_file(path)
            yield text, parse_env(text)
        finally:
            os.close(lock)

    def _acquire(self, lock: int, lock_path: Path) -> None:
        """Take the lock, waiting at most ``lock_timeout`` for another process to let go."""
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"store {self.name!r}: another process has held {lock_path} for "
                        f"more than {self._lock_timeout:g}s; try again later"
                    ) from None
                time.sleep(_LOCK_POLL)

    def _write(self, text: str, updates: Mapping[str, str | None]) -> None:
        path = self._require_file()
        try:
            _replace(path, render_env(text, updates).encode("utf-8"))
        except PermissionError as exc:
            raise StoreAccessDenied(f"store {self.name!r}: cannot write {path}: "
                                    f"{exc.strerror}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"store {self.name!r}: cannot write {path}: "
                                   f"{exc.strerror}") from exc

    def _fenced(self, location: Location, n: Mapping[str, str], v: Mapping[str, str],
                fence: int | None) -> dict[str, str | None]:
        """Refuse a write carrying an older ``fence`` than ``location`` recorded (call under
        the lock); the update that records a newer one with the write."""
        recorded = recorded_fence(v.get(n["fence"]))
        new = refuse_stale(f"store {self.name!r}: {location} ({n['fence']} in {self._file})",
                           recorded, fence)
        return {n["fence"]: str(new)} if fence is not None and new != recorded else {}

    def check_writable(self, location: Location) -> None:
        self._names(location)
        path = self._require_file()
        if not os.access(path.parent, os.W_OK):
            raise StoreAccessDenied(f"store {self.name!r}: directory {path.parent} is not "
                                    "writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise StoreAccessDenied(f"store {self.name!r}: {path} is not writable")

    def stage_pending(
        self,
        location: Location,
        credentials: Credentials,
        rotation_id: RotationId,
        *,
        replace_foreign: bool = False,
        fence: int | None = None,
    ) -> None:
        n = self._names(location)
        for what, value in (("client id", credentials.client_id),
                            ("client secret", credentials.client_secret.reveal())):
            problem = check_secret_value(value)
            if problem:
                raise UnsafeValue(f"store {self.name!r}: the {what} for {location} {problem}; "
                                  "refusing to write it to an env file")
        with self._locked() as (text, v):
            updates: dict[str, str | None] = self._fenced(location, n, v, fence)
            foreign = v.get(n["pending_rid"])
            if v.get(n["pending"]) and foreign != rotation_id and not replace_foreign:
                raise StoreConflict(
                    f"store {self.name!r}: {location} holds a pending secret of rotation "
                    f"{foreign or '(unknown)'}, so rotation {rotation_id} cannot stage; "
                    "finish or abandon it first"
                )
            updates.update({
                n["pending"]: credentials.client_secret.reveal(),
                n["pending_rid"]: rotation_id,
            })
            if not v.get(n["id"]):
                updates[n["id"]] = credentials.client_id
            self._write(text, updates)

    def promote(self, location: Location, rotation_id: RotationId, *,
                fence: int | None = None) -> None:
        n = self._names(location)
        with self._locked() as (text, v):
            fenced = self._fenced(location, n, v, fence)
            if v.get(n["rid"]) == rotation_id:
                if v.get(n["pending_rid"]) == rotation_id:
                    self._write(text, {n["pending"]: None, n["pending_rid"]: None, **fenced})
                return
            if v.get(n["pending_rid"]) != rotation_id or not v.get(n["pending"]):
                raise StoreConflict(
                    f"store {self.name!r}: {location} has no pending secret of rotation "
                    f"{rotation_id} to promote"
                )
            self._write(text, {
                n["previous"]: v.get(n["current"]),
                n["previous_rid"]: v.get(n["rid"]),
                n["current"]: v[n["pending"]],
                n["rid"]: rotation_id,
                n["at"]: datetime.now(UTC).isoformat(timespec="seconds"),
                n["pending"]: None,
                n["pending_rid"]: None,
                **fenced,
            })

    def discard_pending(self, location: Location, rotation_id: RotationId, *,
                        fence: int | None = None) -> None:
        n = self._names(location)
        with self._locked() as (text, v):
            fenced = self._fenced(location, n, v, fence)
            if v.get(n["pending_rid"]) == rotation_id:
                self._write(text, {n["pending"]: None, n["pending_rid"]: None, **fenced})

    def drop_previous(self, location: Location, rotation_id: RotationId, *,
                      fence: int | None = None) -> None:
        n = self._names(location)
        with self._locked() as (text, v):
            fenced = self._fenced(location, n, v, fence)
            if v.get(n["rid"]) == rotation_id and v.get(n["previous"]):
                self._write(text, {n["previous"]: None, n["previous_rid"]: None, **fenced})


def _promoted_at(value: str | None) -> datetime | None:
    """The recorded promotion time, or None when there is none or it does not parse."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
