"""The ``rotator`` command line.

Exit codes: 0 success, 1 a rotation or verification failed, 2 usage or configuration
error. Output is for people by default and JSON with ``--json``. A failure prints one clear
line; the traceback goes to the debug log (``-v``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from rotator.audit import AuditLog, redact_processor
from rotator.config import Config, load_config
from rotator.engine import Adapters, Engine, Outcome
from rotator.errors import ConfigError, RotatorError
from rotator.interfaces import Stage
from rotator.journal import Journal
from rotator.logsafety import install_log_safety
from rotator.secrets import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


#: Where ``--help`` goes: the ``out`` stream given to :func:`run`.
_HELP_OUT: ContextVar[TextIO] = ContextVar("rotator_help_out", default=sys.stdout)


class _UsageError(Exception):
    """The command line itself is wrong (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 itself; keep control here
        raise _UsageError(f"{self.prog}: {message}")

    def print_help(self, file: Any = None) -> None:
        super().print_help(file or _HELP_OUT.get())


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", default="config/rotator.toml",
                        help="configuration file (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="debug log on stderr (tracebacks included)")

    parser = _Parser(prog="rotator", description="Rotate OAuth 2.0 client secrets, verified "
                                                 "and audited.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True,
                                       parser_class=_Parser)
    config_sub.add_parser("check", parents=[common], help="report every configuration problem")

    def clients_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("clients", nargs="*", metavar="CLIENT", help="client names")
        p.add_argument("--all", action="store_true", help="every configured client")
        return p

    rotate = clients_cmd("rotate", "rotate client secrets now")
    rotate.add_argument("--dry-run", action="store_true", help="say what would happen")
    rotate.add_argument("--abandon-pending", action="store_true",
                        help="discard a pending secret that another rotation left behind")
    verify = clients_cmd("verify", "check that the stored secret obtains a token")
    verify.add_argument("--stage", choices=[s.value for s in Stage], default="current")
    retire = clients_cmd("retire", "retire old secrets whose grace period has passed")
    retire.add_argument("--now", action="store_true", help="end the grace period now")
    clients_cmd("status", "show each client's rotation state")
    return parser


def _setup_logging(verbose: bool, stream: TextIO) -> None:
    install_log_safety()
    level = logging.DEBUG if verbose else logging.WARNING
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            redact_processor,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _select(config: Config, args: argparse.Namespace) -> list[str]:
    if args.all and args.clients:
        raise _UsageError("give client names or --all, not both")
    if args.all:
        return list(config.clients)
    if not args.clients:
        raise _UsageError(f"name at least one client or pass --all; configured: "
                          f"{', '.join(config.clients) or 'none'}")
    unknown = [c for c in args.clients if c not in config.clients]
    if unknown:
        raise _UsageError(f"unknown client(s) {', '.join(unknown)}; configured: "
                          f"{', '.join(config.clients)}")
    return list(dict.fromkeys(args.clients))


@contextmanager
def open_engine(config: Config, actor: str = "cli") -> Iterator[Engine]:
    """An engine over ``config`` whose adapters, journal and audit log close on exit."""
    audit = AuditLog(config.audit.require_key(config.path), file=config.audit.file,
                     stdout=config.audit.stdout)
    journal = Journal(config.state_dir)
    adapters = Adapters(config)
    try:
        yield Engine(config, adapters, journal, audit, actor=actor)
    finally:
        adapters.close()
        journal.close()
        audit.close()


def _each(names: list[str], run: Callable[[str], Outcome]) -> list[Outcome]:
    """Run every client in isolation: one failing client never stops the others."""
    outcomes = []
    for name in names:
        try:
            outcomes.append(run(name))
        except RotatorError as exc:
            outcomes.append(Outcome(name, False, "failed", redact(str(exc))))
        except Exception as exc:  # a bug must not stop the other clients either
            structlog.get_logger("rotator.cli").debug("unexpected_error", client=name,
                                                      exc_info=True)
            outcomes.append(Outcome(name, False, "failed",
                                    f"unexpected error {type(exc).__name__}: "
                                    f"{redact(str(exc))} (run with -v for the traceback)"))
    return outcomes


def _print_outcomes(outcomes: list[Outcome], as_json: bool, out: TextIO) -> int:
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        out.write(json.dumps({"results": [o.as_dict() for o in outcomes],
                              "failed": len(failed)}, indent=2) + "\n")
    else:
        for o in outcomes:
            mark = "ok  " if o.ok else "FAIL"
            rid = f" [{o.rotation_id}]" if o.rotation_id else ""
            out.write(f"{mark} {o.client}: {o.action}{rid}: {o.message}\n")
        if failed:
            out.write(f"{len(failed)} of {len(outcomes)} client(s) failed\n")
    return EXIT_FAILED if failed else EXIT_OK


def _print_status(rows: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps({"clients": rows}, indent=2) + "\n")
        return
    for row in rows:
        age = row["age_seconds"]
        if row["last_rotation"] is None:
            age_text = "never rotated by rotator" + (
                "" if age is None else f" (current secret stored {_human_age(age)} ago)")
        else:
            age_text = "rotated " + ("at an unknown time" if age is None
                                     else f"{_human_age(age)} ago")
        out.write(f"{row['client']} ({row['client_id']} at {row['idp']}): {row['state']}, "
                  f"{age_text}\n")
        for key, facts in row["stores"].items():
            if "error" in facts:
                out.write(f"  store {key}: error: {facts['error']}\n")
            else:
                out.write(f"  store {key}: current={'yes' if facts['has_current'] else 'no'}"
                          f" rotation={facts['current_rotation_id'] or '-'}"
                          f" pending={facts['pending_rotation_id'] or '-'}"
                          f" previous={'yes' if facts['has_previous'] else 'no'}\n")
        last = row["last_rotation"]
        if last:
            out.write(f"  last rotation {last['id']}: {last['state']} by {last['actor']} at "
                      f"{last['updated_at']}" + (f" ({last['error']})" if last["error"] else "")
                      + "\n")


def _human_age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run the CLI with ``argv``; return the exit code."""
    _HELP_OUT.set(out)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        err.write(f"{exc}\nrun 'rotator --help' for usage\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    _setup_logging(args.verbose, err)
    log = structlog.get_logger("rotator.cli")
    try:
        config = load_config(args.config)
        if args.command == "config":
            if args.json:
                out.write(json.dumps({"ok": True, "clients": list(config.clients)}) + "\n")
            else:
                out.write(f"{args.config}: ok ({len(config.clients)} client(s), "
                          f"{len(config.stores)} store(s), {len(config.idps)} IdP(s))\n")
            return EXIT_OK
        names = _select(config, args)
        with open_engine(config) as engine:
            if args.command == "status":
                rows = [engine.status(n) for n in names]
                _print_status(rows, args.json, out)
                return EXIT_OK
            if args.command == "rotate":
                outcomes = _each(names, lambda n: engine.rotate(
                    n, dry_run=args.dry_run, abandon_pending=args.abandon_pending))
            elif args.command == "verify":
                outcomes = _each(names, lambda n: engine.verify(n, Stage(args.stage)))
            else:
                outcomes = _each(names, lambda n: engine.retire(n, now=args.now))
            return _print_outcomes(outcomes, args.json, out)
    except ConfigError as exc:
        if getattr(args, "json", False):
            out.write(json.dumps({"ok": False, "problems": [
                {"file": p.file, "key": p.key, "reason": p.reason} for p in exc.problems]},
                indent=2) + "\n")
        else:
            err.write(f"{exc}\n")
        return EXIT_USAGE
    except _UsageError as exc:
        err.write(f"rotator: {exc}\n")
        return EXIT_USAGE
    except RotatorError as exc:
        log.debug("command_failed", exc_info=True)
        err.write(f"rotator: {redact(str(exc))}\n")
        return EXIT_FAILED
    except Exception as exc:  # a bug: one line for the user, the traceback in the debug log
        log.debug("unexpected_error", exc_info=True)
        err.write(f"rotator: unexpected error {type(exc).__name__}: {redact(str(exc))} "
                  "(run with -v for the traceback)\n")
        return EXIT_FAILED


def main() -> None:
    sys.exit(run(sys.argv[1:], sys.stdout, sys.stderr))
