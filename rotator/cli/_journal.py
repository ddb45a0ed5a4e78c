"""``rotator journal migrate``: the SQLite journal's history into PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os
from typing import TextIO

from rotator.cli._parser import EXIT_OK, UsageError
from rotator.config import Config
from rotator.journal import SqliteJournal
from rotator.secrets import Secret


def journal_command(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """``journal migrate``: the SQLite journal of ``config`` into the database named."""
    from rotator.daemon.process import instance_lock
    from rotator.journal.migrate import copy_history
    from rotator.journal.postgres import PostgresJournal, url_problem

    url = args.to if args.to is not None else os.environ.get(args.to_env, "")
    if not url:
        raise UsageError(f"environment variable {args.to_env} is not set")
    problem = url_problem(url, config.journal.allow_weak_tls)
    if problem is not None:
        raise UsageError(f"the target URL: {problem}")
    with instance_lock(config.state_dir):  # no daemon writes the source meanwhile
        source = SqliteJournal(config.state_dir)
        try:
            target = PostgresJournal(Secret(url))
            try:
                copied = copy_history(source, target)
                where = target.where
            finally:
                target.close()
        finally:
            source.close()
    if args.json:
        out.write(json.dumps({"ok": True, "rotations": copied.rotations, "steps": copied.steps,
                              "open_rotations": copied.open_rotations, "to": where}) + "\n")
    else:
        out.write(f"copied {copied.rotations} rotation(s) ({copied.steps} step(s), "
                  f"{copied.open_rotations} unfinished) from {source.path} to {where}; point "
                  "[journal] url_env at it before starting rotator again\n")
    return EXIT_OK
