"""Leases for daemons sharing one journal: a job holds its client's lease while it runs.

With ``[journal] url_env`` several daemons schedule the same clients. A job first takes the
client's lease (:meth:`rotator.interfaces.Journal.acquire_lease`); a daemon that finds it held
reports the client as locked and tries later. While the job runs, a :class:`LeaseKeeper`
renews the lease every third of its length, and the engine writes through
``journal.fenced(lease)``, so a daemon that stalled past its lease (a pause, SIGSTOP, a
partition) and was taken over has every later journal write refused with ``LeaseLost``.
The engine hands the same token (``fenced.lease.token``) to every store write, and a store
that a newer holder wrote refuses it with ``FencedOut`` (see ``SecretStore`` and docs/ha.md).

Under the lease the job re-reads the journal: a scheduled rotation whose client another
daemon rotated since this daemon last looked is skipped (``rotated_by_other``), so two
daemons that both found a client due rotate it once.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import structlog

from rotator.errors import LeaseLost, RotationLocked, RotatorError
from rotator.interfaces import Journal, Lease

log = structlog.get_logger("rotator.daemon")


def holder_name() -> str:
    """This daemon's name in lease rows: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()[:100]}/{os.getpid()}/{secrets.token_hex(4)}"


class LeaseKeeper:
    """Renews a fenced journal's lease every ``ttl / 3`` seconds until stopped."""

    def __init__(self, journal: Journal, ttl: float) -> None:
        self.journal = journal  # a fenced journal: renewing it moves its lease on
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rotator-lease", daemon=True)
        self.lost = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        lease: Lease = self.journal.lease  # type: ignore[attr-defined]
        while not self._stop.wait(self.ttl / 3):
            try:
                lease = self.journal.renew_lease(lease, self.ttl)
            except LeaseLost:  # logged by the fenced journal (once, with the job's write)
                self.lost = True
                return
            except RotatorError as exc:  # the database is away: the writes will fail too
                log.warning("lease_renewal_failed", client=lease.client, error=str(exc))


@contextmanager
def leased(journal: Journal, client: str, holder: str, ttl: float, *,
           claimed: Lease | None = None) -> Iterator[Journal]:
    """Hold ``client``'s lease for the block; yield the journal fenced by it.

    ``claimed``: a lease the scheduler already took (:func:`claim`); else one is acquired.
    Raises ``RotationLocked`` when another daemon holds the lease.
    """
    lease = claimed if claimed is not None else journal.acquire_lease(client, holder, ttl)
    if lease is None:
        raise RotationLocked(f"client {client!r} is being rotated by another daemon")
    fenced = journal.fenced(lease)
    keeper = LeaseKeeper(fenced, ttl)
    keeper.start()
    try:
        yield fenced
    finally:
        keeper.stop()
        with suppress(RotatorError):
            journal.release_lease(fenced.lease)  # type: ignore[attr-defined]


def claim(journal: Journal, clients: list[str], holder: str, ttl: float,
          limit: int, known: list[str | None], *,
          rooms: list[tuple[str, int]] | None = None
          ) -> tuple[dict[str, Lease], list[str]] | None:
    """Leases on at most ``limit`` of ``clients`` that no daemon holds, taken in one database
    round trip (``PostgresJournal.claim_leases``), and the clients another daemon rotated
    since ``known`` (per client: its newest rotation id known, or "" for no check); None
    when the journal cannot batch. ``rooms``: per client, its IdP and how many of that IdP
    may still be claimed."""
    batch = getattr(journal, "claim_leases", None)
    if batch is None:
        return None
    leases, elsewhere = batch(clients, holder, ttl, limit, known) if rooms is None \
        else batch(clients, holder, ttl, limit, known, rooms=rooms)
    return {lease.client: lease for lease in leases}, list(elsewhere)
