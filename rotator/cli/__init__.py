"""The ``rotator`` command line.

Exit codes: 0 success, 1 a rotation or verification failed (for ``status``: a client is in
an error state), 2 usage or configuration error, including a state directory or audit file
that cannot be opened. Output is for people by default and JSON with ``--json``; the JSON
result always parses, because audit lines configured for stdout then go to stderr. A failure
prints one clear line; ``-v`` adds the debug log with tracebacks, secrets redacted. A closed
output pipe (``rotator status | head``) ends the command quietly with exit 141, as if
SIGPIPE had killed it.

One module a command group: ``_clients`` (rotate, verify, retire, status), ``_audit``,
``_journal``; ``_parser`` holds the grammar and exit codes, ``_engine`` opens the engine a
command runs on, ``_logs`` the operational log.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import structlog

from rotator.cli._audit import audit_command
from rotator.cli._clients import client_command, each_parallel
from rotator.cli._engine import open_engine
from rotator.cli._journal import journal_command
from rotator.cli._logs import setup_logging
from rotator.cli._parser import (
    DEFAULT_LOCK_WAIT,
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    HELP_OUT,
    LOG_FORMATS,
    UsageError,
    parser,
)
from rotator.config import load_config
from rotator.errors import ConfigError, RotatorError
from rotator.secrets import redact

__all__ = ["DEFAULT_LOCK_WAIT", "EXIT_BROKEN_PIPE", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE",
           "LOG_FORMATS", "main", "open_engine", "run"]

# The names tests and earlier versions imported from the single-module rotator/cli.py.
_each_parallel = each_parallel
_setup_logging = setup_logging


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run the CLI with ``argv``; return the exit code."""
    HELP_OUT.set(out)
    try:
        args = parser().parse_args(argv)
    except UsageError as exc:
        err.write(f"{exc}\nrun 'rotator --help' for usage\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    setup_logging(args.verbose, err, args.log_format)
    log = structlog.get_logger("rotator.cli")
    try:
        # status reads stores and asks the IdP's token endpoint: no audit key, no admin secret
        config = load_config(args.config, stores_only=args.command == "status")
        if args.command == "config":
            if args.json:
                out.write(json.dumps({"ok": True, "clients": list(config.clients)}) + "\n")
            else:
                out.write(f"{args.config}: ok ({len(config.clients)} client(s), "
                          f"{len(config.stores)} store(s), {len(config.idps)} IdP(s))\n")
            return EXIT_OK
        if args.command == "run":
            from rotator.daemon.process import main as run_daemon

            return run_daemon(config, out, err, verbose=args.verbose)
        if args.command == "audit":
            return audit_command(args, config, out, err)
        if args.command == "journal":
            return journal_command(args, config, out)
        return client_command(args, config, out, err)
    except ConfigError as exc:
        if getattr(args, "json", False):
            out.write(json.dumps({"ok": False, "problems": [
                {"file": p.file, "key": p.key, "reason": p.reason} for p in exc.problems]},
                indent=2) + "\n")
        else:
            err.write(f"{exc}\n")
        return EXIT_USAGE
    except UsageError as exc:
        err.write(f"rotator: {exc}\n")
        return EXIT_USAGE
    except RotatorError as exc:
        log.debug("command_failed", exc_info=True)
        err.write(f"rotator: {redact(str(exc))}\n")
        return EXIT_FAILED
    except BrokenPipeError:
        raise  # main() ends quietly
    except Exception as exc:  # a bug: one line for the user, the traceback in the debug log
        log.debug("unexpected_error", exc_info=True)
        err.write(f"rotator: unexpected error {type(exc).__name__}: {redact(str(exc))} "
                  "(run with -v for the traceback)\n")
        return EXIT_FAILED


def main() -> None:
    try:
        code = run(sys.argv[1:], sys.stdout, sys.stderr)
        sys.stdout.flush()  # here, so a closed pipe is not reported at interpreter exit
    except BrokenPipeError:
        # Whoever reads our output has gone (``| head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
