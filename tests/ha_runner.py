"""Run ``rotator run`` (a daemon) with a kill point: the several-daemon tests' subject.

    python ha_runner.py ROTATOR-ARGS...

``ROTATOR_TEST_HA_POINT=ACTION:STATE`` makes the daemon, the first time one of its jobs is
about to record STATE in the PostgreSQL journal (through the fenced journal), either die
(``kill``: SIGKILL) or freeze (``stop``: SIGSTOP, every thread, lease renewal included) just
before the write. The step's effect on the stores or the IdP has happened; the journal does
not know it yet. ``started`` is the rotation's first write (``begin``), and so is the state
``begin`` moves it on to in the same write (``creating`` where the IdP makes the value). A STATE of
``store.METHOD`` (``store.stage_pending``, ``store.promote``) acts instead just before a job's
first fenced call of that env-store write: the journal step before it is recorded, the store
write is not made yet.

``ROTATOR_TEST_HA_COUNT=PATH`` writes the number of statements the daemon sent to
PostgreSQL to PATH when it exits (the benchmark's round trips).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from rotator.cli import main
from rotator.journal import postgres


def _install_point(point: str) -> None:
    action, _, target = point.partition(":")
    sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}[action]
    fired = threading.Lock()

    def hit() -> None:
        if fired.acquire(blocking=False):
            sys.stderr.write(f"ha_runner: {action} before {target}\n")
            sys.stderr.flush()
            # To this very thread: a signal sent to the process may be taken by another
            # thread, and this one run on (into a store's file lock, say) before it stops.
            signal.pthread_kill(threading.get_ident(), sig)

    if target.startswith("store."):
        _install_store_point(target.removeprefix("store."), hit)
        return
    original_begin = postgres.PostgresJournal._begin
    original_advance = postgres.PostgresJournal._advance

    def begin(self: postgres.PostgresJournal, *args: Any) -> Any:
        # (rotation_id, client, family, actor, old_fingerprint, now, targets, audit_key_id,
        # fence, then): a fenced write (a daemon job) of STARTED, and of ``then`` with it
        fence, then = args[8], args[9] if len(args) > 9 else None
        if fence is not None and target in ("started", then.value if then else "started"):
            hit()
        return original_begin(self, *args)

    def advance(self: postgres.PostgresJournal, rotation_id: str, state: Any, *args: Any
                ) -> Any:
        if state.value == target and args[-2] is not None:  # a fenced write (a daemon job)
            hit()
        return original_advance(self, rotation_id, state, *args)

    postgres.PostgresJournal._begin = begin  # type: ignore[method-assign]
    postgres.PostgresJournal._advance = advance  # type: ignore[method-assign]


def _install_store_point(method: str, hit: Callable[[], None]) -> None:
    """Call ``hit`` before the first env-store ``method`` call that carries a fence."""
    from providers.stores.env import EnvStore

    original = getattr(EnvStore, method)

    def patched(self: EnvStore, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("fence") is not None:  # a daemon job's write
            hit()
        return original(self, *args, **kwargs)

    setattr(EnvStore, method, patched)


def _install_counter(path: str) -> None:
    """Count the statements sent to PostgreSQL; the total is written to PATH at exit."""
    import atexit

    import psycopg

    original = psycopg.Connection.execute
    count = [0]
    lock = threading.Lock()

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            count[0] += 1
        return original(self, *args, **kwargs)

    def write() -> None:
        with open(path, "w") as out:
            out.write(f"{count[0]}\n")

    psycopg.Connection.execute = counted  # type: ignore[method-assign]
    atexit.register(write)


if __name__ == "__main__":
    if os.environ.get("ROTATOR_TEST_HA_POINT"):
        _install_point(os.environ["ROTATOR_TEST_HA_POINT"])
    if os.environ.get("ROTATOR_TEST_HA_COUNT"):
        _install_counter(os.environ["ROTATOR_TEST_HA_COUNT"])
    sys.argv = ["rotator", *sys.argv[1:]]
    main()
