"""Retire when unused: which secret each consumer uses, and the gate that waits for them.

Consumers that use :mod:`rotator.client` report, at most once per token refresh, the keyed
fingerprint of the secret they use (never the value) to the daemon's API
(``POST /v1/clients/{name}/consumers``, role ``consumer``). The daemon keeps the last report
per consumer instance in :class:`ConsumerRegistry`.

A client with ``retire = "when_unused"`` has its old secret retired once every consumer seen
within ``consumers_seen_within`` reports the new secret's fingerprint, but not before
``min_grace`` after promotion; when ``grace_period`` after promotion passes first, the old
secret is retired anyway and an alert names the consumers still on it. :class:`ConsumerGate`
is that rule, a :class:`rotator.interfaces.RetirementGate`.

Fingerprints. Consumers do not hold the audit key (it also seals the audit chain), so they
fingerprint with a per-client *consumer key*: HMAC-SHA256(the state directory's
``consumer-fingerprint.key``, ``rotator-consumer-fingerprint-v1`` + client name), printed by
``python -m rotator.consumers key --state-dir DIR NAME``. A consumer of one client cannot
compute fingerprints of another's secrets. The gate fingerprints the client's stored current
secret with the same key and compares.

Why a file and not a journal table: reports are soft state (a lost report only delays a
retirement, never past ``grace_period``), they change at every consumer's token refresh, and
the CLI's ``retire`` must see what the daemon received; ``consumers.json`` in the state
directory (mode 0600, replaced atomically under an ``flock``, as ``alerts.json`` is) survives a
restart, keeps the Journal protocol unchanged for every journal backend, and stays bounded:
instances not seen within ``consumers_seen_within`` are dropped at the next write, and at most
:data:`MAX_INSTANCES` are kept per client.

IdP-side knowledge. Where an IdP can tell which secret signed in (Entra service principal
sign-in logs carry the credential key id), its adapter may define
``secrets_in_use(client_id, since) -> Sequence[str] | None`` (:class:`SecretsInUse`): the
IdP's secret refs used since ``since``. It is declared only: no shipped adapter has it, and
the gate does not consult it yet (it would hold while the old secret's ref is among them).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from rotator._files import (
    ensure_private_dir,
    open_private,
    read_private_file,
    write_private_file,
)
from rotator.errors import RotationError
from rotator.interfaces import Journal, Rotation, State
from rotator.secrets import Secret, fingerprint

log = structlog.get_logger("rotator.consumers")

#: At most this many consumer instances are kept per client (the oldest are dropped).
MAX_INSTANCES = 1000
KEY_FILE = "consumer-fingerprint.key"
REPORTS_FILE = "consumers.json"
_KEY_LABEL = b"rotator-consumer-fingerprint-v1\n"
#: What an instance id, hostname and fingerprint may look like (they land in status output).
INSTANCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
HOSTNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$"
FINGERPRINT_PATTERN = r"^hmac-sha256:[0-9a-f]{32}$"
_FINGERPRINT = re.compile(FINGERPRINT_PATTERN)


def consumer_key(state_dir: Path, client: str) -> bytes:
    """The key ``client``'s consumers fingerprint their secret with (created on first use)."""
    ensure_private_dir(state_dir)
    path = state_dir / KEY_FILE
    try:
        master = read_private_file(path)
    except FileNotFoundError:
        lock_fd = open_private(state_dir / "consumers.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                master = read_private_file(path)
            except FileNotFoundError:
                master = secrets.token_bytes(32)
                write_private_file(path, master)
        finally:
            os.close(lock_fd)
    return hmac.new(master, _KEY_LABEL + client.encode(), hashlib.sha256).digest()


def consumer_fingerprint(key: bytes, secret: Secret) -> str:
    """What a consumer holding ``key`` reports for ``secret``."""
    return fingerprint(key, secret)


@dataclass(frozen=True)
class ConsumerReport:
    """The last report of one consumer instance: no secret, only its fingerprint."""

    instance: str
    fingerprint: str
    seen_at: datetime
    hostname: str | None = None
    pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seen_at"] = self.seen_at.isoformat()
        return out


class ConsumerRegistry:
    """The last report per consumer instance, per client, in ``state_dir/consumers.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def record(self, client: str, report: ConsumerReport, *, keep_for: float) -> None:
        """Keep ``report`` as ``report.instance``'s last; drop instances older than
        ``keep_for`` seconds."""
        if not _FINGERPRINT.match(report.fingerprint):
            raise ValueError("not a consumer fingerprint")
        with self._state() as state:
            entries = state.setdefault("clients", {}).setdefault(client, {})
            entries[report.instance] = report.as_dict()
            cutoff = report.seen_at - timedelta(seconds=keep_for)
            kept = sorted((e for e in entries.values()
                           if datetime.fromisoformat(e["seen_at"]) >= cutoff),
                          key=lambda e: e["seen_at"])[-MAX_INSTANCES:]
            state["clients"][client] = {e["instance"]: e for e in kept}

    def seen(self, client: str, *, within: float, now: datetime,
             snapshot: Mapping[str, Any] | None = None) -> list[ConsumerReport]:
        """The last report of every instance of ``client`` seen within ``within`` seconds
        (from ``snapshot``, a :meth:`snapshot` taken before, when given)."""
        state = self._read() if snapshot is None else snapshot
        cutoff = now - timedelta(seconds=within)
        found = [_report(e) for e in state.get("clients", {}).get(client, {}).values()]
        return sorted((r for r in found if r.seen_at >= cutoff), key=lambda r: r.instance)

    def note(self, client: str, key: str, value: str | None) -> str | None:
        """Set (or with None, read) a small per-client note; returns the previous value."""
        with self._state() as state:
            notes = state.setdefault("notes", {}).setdefault(client, {})
            before: str | None = notes.get(key)
            if value is not None:
                notes[key] = value
            return before

    def notes(self, client: str, snapshot: Mapping[str, Any] | None = None
              ) -> Mapping[str, str]:
        state = self._read() if snapshot is None else snapshot
        result: Mapping[str, str] = state.get("notes", {}).get(client, {})
        return result

    def snapshot(self) -> Mapping[str, Any]:
        """Everything kept, read once (for answering about many clients)."""
        return self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(read_private_file(
                self.state_dir / REPORTS_FILE) or b"{}")
        except FileNotFoundError:
            return {}
        return data

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        ensure_private_dir(self.state_dir)
        lock_fd = open_private(self.state_dir / "consumers.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            state = self._read()
            yield state
            write_private_file(self.state_dir / REPORTS_FILE,
                               json.dumps(state, sort_keys=True, indent=1).encode())
        finally:
            os.close(lock_fd)


def _report(entry: Mapping[str, Any]) -> ConsumerReport:
    return ConsumerReport(str(entry["instance"]), str(entry["fingerprint"]),
                          datetime.fromisoformat(entry["seen_at"]),
                          entry.get("hostname"), entry.get("pid"))


@runtime_checkable
class SecretsInUse(Protocol):
    """An IdP adapter capability: which of a client's secrets signed in since a time."""

    def secrets_in_use(self, client_id: str, since: datetime) -> Sequence[str] | None:
        """The IdP's secret refs (``IssuedSecret.secret_ref``) that obtained a token since
        ``since``, or None when the IdP cannot tell now."""
        ...


def promoted_at(journal: Journal, rotation: Rotation) -> datetime:
    """When ``rotation``'s new secret became current."""
    for step in journal.steps(rotation.id):
        if step.state is State.PROMOTED:
            return step.at
    return rotation.updated_at


#: Told the consumers still on the old secret when the upper bound retired it anyway.
RetiredInUse = Callable[[Any, Rotation, Sequence[ConsumerReport]], None]


class ConsumerGate:
    """Holds a ``when_unused`` client's retirement until its consumers moved (see module).

    ``current`` reads the client's stored current secret (the engine's first store).
    """

    def __init__(self, registry: ConsumerRegistry, journal: Journal,
                 current: Callable[[Any], Secret | None], *,
                 clock: Callable[[], datetime],
                 retired_in_use: RetiredInUse | None = None) -> None:
        self.registry = registry
        self.journal = journal
        self.current = current
        self.clock = clock
        self.retired_in_use = retired_in_use

    def holds(self, client: Any, rotation: Rotation) -> str | None:
        if getattr(client, "retire", "after_grace") != "when_unused":
            return None
        # min_grace is the rotation's retire_after (set at promotion): the engine asks the
        # gates only once it passed, or once ``retire --now`` ended it.
        now = self.clock()
        since = promoted_at(self.journal, rotation)
        old = self.still_on_old(client, now=now)
        if not old:
            return None
        deadline = since + timedelta(seconds=client.grace_period)
        if now >= deadline:
            log.warning("retired_while_in_use", client=client.name,
                        consumers=[r.instance for r in old])
            if self.retired_in_use is not None:
                self.retired_in_use(client, rotation, old)
            return None
        names = ", ".join(r.instance for r in old[:5]) + (" ..." if len(old) > 5 else "")
        return (f"{len(old)} consumer(s) still use the old secret ({names}); it is retired "
                f"when they move, by {deadline.isoformat(timespec='seconds')} at the latest")

    def still_on_old(self, client: Any, *, now: datetime) -> list[ConsumerReport]:
        """The consumers seen within the window whose fingerprint is not the current one."""
        seen = self.registry.seen(client.name, within=client.consumers_seen_within, now=now)
        if not seen:
            return []
        secret = self.current(client)
        if secret is None:
            raise RotationError(f"cannot read the current secret of {client.name} to compare "
                                "with its consumers' reports")
        new = consumer_fingerprint(consumer_key(self.registry.state_dir, client.name), secret)
        self.registry.note(client.name, "current_fingerprint", new)
        return [r for r in seen if r.fingerprint != new]


def consumer_rows(state_dir: Path, client: Any, now: datetime) -> list[dict[str, Any]]:
    """What ``status`` shows of ``client``'s consumers: each one seen within the window, its
    fingerprint, when last seen, and whether it uses the current secret (None: not known
    until the daemon compared, at a retirement of a ``when_unused`` client)."""
    registry = ConsumerRegistry(state_dir)
    try:
        snapshot = registry.snapshot()
        seen = registry.seen(client.name, within=client.consumers_seen_within, now=now,
                             snapshot=snapshot)
        current = registry.notes(client.name, snapshot).get("current_fingerprint")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("consumer_reports_unreadable", error=str(exc))
        return []
    return [{**r.as_dict(), "current": None if current is None else r.fingerprint == current}
            for r in seen]


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m rotator.consumers")
    sub = parser.add_subparsers(dest="command", required=True)
    key = sub.add_parser("key", help="print a client's consumer fingerprint key (hex)")
    key.add_argument("--state-dir", required=True, type=Path)
    key.add_argument("client")
    args = parser.parse_args(argv)
    sys.stdout.write(consumer_key(args.state_dir, args.client).hex() + "\n")
    return 0


__all__ = [
    "ConsumerGate",
    "ConsumerRegistry",
    "ConsumerReport",
    "SecretsInUse",
    "consumer_fingerprint",
    "consumer_key",
    "consumer_rows",
    "promoted_at",
]

if __name__ == "__main__":
    raise SystemExit(_main())
