"""The engine a command runs on, with its audit log and journal, closed on exit."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TextIO

from rotator import interfaces
from rotator.audit import AuditLog
from rotator.config import Config
from rotator.engine import Adapters, Engine
from rotator.errors import ConfigError, ConfigProblem, RotatorError
from rotator.journal import Journal, open_journal
from rotator.secrets import generate_secret


@contextmanager
def open_engine(config: Config, actor: str = "cli", *, audit_stdout: TextIO | None = None,
                audited: bool = True) -> Iterator[Engine]:
    """An engine over ``config`` whose adapters, journal and audit log close on exit.

    Audit lines configured for stdout go to ``audit_stdout`` (default: the process's
    stdout). An engine that is not ``audited`` (for ``status``, which writes no audit event
    and shows no fingerprint) needs no audit key and opens no audit file. Raises
    ``ConfigError`` naming the setting when the state directory or the audit file cannot be
    opened.
    """
    with ExitStack() as stack:
        if audited:
            audit = open_audit(config, audit_stdout or sys.stdout)
        else:
            audit = AuditLog(generate_secret())  # no sink: nothing is ever written
        stack.callback(audit.close)
        journal = open_journal_of(config)
        stack.callback(journal.close)
        if audited:  # the last checkpoint is recorded before the journal closes
            audit.record_checkpoints(journal)
            stack.callback(audit.stop_checkpoints)
        adapters = Adapters(config)
        stack.callback(adapters.close)
        yield Engine(config, adapters, journal, audit, actor=actor)


def open_audit(config: Config, stdout: TextIO) -> AuditLog:
    try:
        return AuditLog.from_config(config, stream=stdout if config.audit.stdout else None)
    except OSError as exc:
        raise ConfigError([ConfigProblem(
            str(config.path), "audit.file",
            f"cannot open {config.audit.file}: {exc.strerror or exc}")]) from exc


def open_journal_of(config: Config) -> interfaces.Journal:
    if config.journal.url is not None:  # a database; its errors name it, not the state dir
        return open_journal(config)
    try:
        return Journal(config.state_dir)
    except (RotatorError, OSError) as exc:
        # The nearest existing path decides: a file where a directory should be is the
        # commonest mistake, and the journal's own message would only say [Errno 17].
        here = next((p for p in (config.state_dir, *config.state_dir.parents) if p.exists()),
                    None)
        reason = (f"{here} is not a directory" if here is not None and not here.is_dir()
                  else f"cannot open the rotation journal in {config.state_dir}: {exc}")
        raise ConfigError([ConfigProblem(str(config.path), "rotator.state_dir",
                                         reason)]) from exc
