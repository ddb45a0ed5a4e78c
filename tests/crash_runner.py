"""Run the rotator CLI and SIGKILL it at a chosen point: the crash-safety tests' subject.

    python crash_runner.py MODE TARGET ROTATOR-ARGS...

MODE ``event``: die right after the audit event TARGET (``name`` or ``name#N`` for its N-th
occurrence, counted across ``--parallel`` workers) is written, i.e. after the step it
reports took effect and before the journal records it. MODE ``advance``: die just before
the journal records state TARGET (with ``advance``, or with ``begin`` when the rotation
begins in it).
MODE ``call``/``returned``: die when the method TARGET (``module:Class.method``) is called,
or just after it returned.
MODE ``none``: run normally.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Any

from rotator import audit, journal
from rotator.cli import run


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    mode, target, args = argv[0], argv[1], argv[2:]
    if mode == "event":
        name, _, nth = target.partition("#")
        wanted = int(nth or 1)
        seen = {"count": 0}
        counting = threading.Lock()  # ``rotate --parallel`` writes events from several threads
        original_event = audit.AuditLog.event

        def event(self: audit.AuditLog, event_name: str, **fields: Any) -> None:
            original_event(self, event_name, **fields)
            if event_name == name:
                with counting:
                    seen["count"] += 1
                    if seen["count"] == wanted:
                        _die()

        audit.AuditLog.event = event  # type: ignore[method-assign]
    elif mode == "advance":
        original_advance = journal.Journal.advance

        def advance(self: journal.Journal, rotation_id: str, state: journal.State,
                    now: Any, **fields: Any) -> journal.Rotation:
            if state.value == target:
                _die()
            return original_advance(self, rotation_id, state, now, **fields)

        journal.Journal.advance = advance  # type: ignore[method-assign]
        # the same kill point with the journal in PostgreSQL ([journal] url_env / url_file)
        from rotator.journal import postgres

        original_pg_advance = postgres.PostgresJournal.advance

        def pg_advance(self: postgres.PostgresJournal, rotation_id: str,
                       state: journal.State, now: Any, **fields: Any) -> journal.Rotation:
            if state.value == target:
                _die()
            return original_pg_advance(self, rotation_id, state, now, **fields)

        postgres.PostgresJournal.advance = pg_advance  # type: ignore[method-assign]
        # A state recorded with the rotation's beginning (begin's ``then``: CREATING where
        # the IdP makes the value) dies just before that one commit.
        for cls in (journal.Journal, postgres.PostgresJournal):
            def begin(self: Any, *args: Any, _original: Any = cls.begin, **kw: Any) -> Any:
                then = kw.get("then")
                if then is not None and then.value == target:
                    _die()
                return _original(self, *args, **kw)

            cls.begin = begin  # type: ignore[method-assign]
    elif mode in ("call", "returned"):
        module_name, _, qualname = target.partition(":")
        class_name, _, method = qualname.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        original = getattr(cls, method)

        def dying(*args: Any, **kwargs: Any) -> Any:
            if mode == "call":
                _die()
            result = original(*args, **kwargs)
            _die()
            return result

        setattr(cls, method, dying)
    return run(args, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
