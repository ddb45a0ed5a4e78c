"""The ``rotator`` command line.

Exit codes: 0 success, 1 a rotation or verification failed (for ``status``: a client is in
an error state), 2 usage or configuration error, including a state directory or audit file
that cannot be opened. Output is for people by default and JSON with ``--json``; the JSON
result always parses, because audit lines configured for stdout then go to stderr. A failure
prints one clear line; ``-v`` adds the debug log with tracebacks, secrets redacted. A closed
output pipe (``rotator status | head``) ends the command quietly with exit 141, as if
SIGPIPE had killed it.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from rotator import __version__, interfaces
from rotator.audit import AuditLog, redact_processor
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path
from rotator.audit.chain import verify as verify_chain
from rotator.audit.checkpoints import key_id as checkpoint_key_id
from rotator.audit.checkpoints import log_id
from rotator.config import ClientConfig, Config, load_config
from rotator.engine import Adapters, Engine, Outcome
from rotator.errors import ConfigError, ConfigProblem, RotatorError
from rotator.interfaces import Stage
from rotator.journal import Journal, SqliteJournal, open_journal
from rotator.logsafety import install_log_safety
from rotator.secrets import Secret, generate_secret, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: A closed output pipe: the code of a process killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141
#: How long ``rotate`` waits, by default, for another process rotating the same client.
DEFAULT_LOCK_WAIT = 300.0
#: Renderers for the operational log on stderr (``--log-format``); not the audit log.
LOG_FORMATS = ("console", "json")


#: Where ``--help`` goes: the ``out`` stream given to :func:`run`.
_HELP_OUT: ContextVar[TextIO] = ContextVar("rotator_help_out", default=sys.stdout)


class _UsageError(Exception):
    """The command line itself is wrong (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 itself; keep control here
        raise _UsageError(f"{self.prog}: {message}")

    def print_help(self, file: Any = None) -> None:
        super().print_help(file or _HELP_OUT.get())


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        _HELP_OUT.get().write(f"rotator {__version__}\n")
        raise SystemExit(0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", default="config/rotator.toml",
                        help="configuration file (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="debug log on stderr (tracebacks included)")
    common.add_argument("--log-format", choices=LOG_FORMATS, default="console",
                        help="how log lines on stderr look: console (key=value, for people) "
                             "or json (one object a line, for a log shipper); both start with "
                             "an ISO 8601 UTC timestamp (default: %(default)s)")

    parser = _Parser(prog="rotator", description="Rotate OAuth 2.0 client secrets, verified "
                                                 "and audited.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print rotator's version and exit")
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
    rotate.add_argument("--wait", type=_seconds, default=DEFAULT_LOCK_WAIT, metavar="SECONDS",
                        help="how long to wait while another process rotates the same client "
                             "(default: %(default)g)")
    rotate.add_argument("--force", action="store_true",
                        help="rotate even if another process rotated the client after this "
                             "command was given")
    rotate.add_argument("--due", action="store_true",
                        help="only the clients that are due, by the daemon's rule")
    rotate.add_argument("--parallel", type=_positive, default=1, metavar="N",
                        help="rotate up to N clients at once, at most [daemon] "
                             "idp_concurrency of them against one IdP (default: %(default)s)")
    verify = clients_cmd("verify", "check that the stored secret obtains a token")
    verify.add_argument("--stage", choices=[s.value for s in Stage], default="current",
                        help="which stored secret to try (default: %(default)s)")
    retire = clients_cmd("retire", "retire old secrets whose grace period has passed")
    retire.add_argument("--now", action="store_true", help="end the grace period now")
    status = clients_cmd("status", "show each client's rotation state (default: every client)")
    status.set_defaults(all_by_default=True)
    sub.add_parser("run", parents=[common], help="run the daemon: rotate and retire on schedule")

    audit = sub.add_parser("audit", help="audit log commands")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    check = audit_sub.add_parser(
        "verify", parents=[common],
        help="check the audit log's sequence and HMAC chain; exit 1 at the first bad record")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="the log's files, oldest first (rotated ones, then the live one)")
    check.add_argument("--checkpoint", metavar="FILE",
                       help="checkpoint to detect a truncated tail (default: the configured "
                            "audit file's, when that file is given)")
    check.add_argument("--journal", action="store_true",
                       help="also check the log against the checkpoints the configured "
                            "journal keeps of it (see docs/audit.md)")
    audit_sub.add_parser(
        "fingerprint", parents=[common],
        help="read a secret from stdin (no echo) and print the fingerprint the audit log "
             "would show for it")
    journal = sub.add_parser("journal", help="rotation journal commands")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True,
                                         parser_class=_Parser)
    migrate = journal_sub.add_parser(
        "migrate", parents=[common],
        help="copy the SQLite journal's history into an empty PostgreSQL journal")
    target = migrate.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-env", metavar="VAR",
                        help="environment variable holding the PostgreSQL URL (keeps its "
                             "password off the command line)")
    target.add_argument("--to", metavar="URL", help="the PostgreSQL URL")
    return parser


def _journal_command(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """``journal migrate``: the SQLite journal of ``config`` into the database named."""
    from rotator.daemon.process import instance_lock
    from rotator.journal.migrate import copy_history
    from rotator.journal.postgres import PostgresJournal, url_problem

    url = args.to if args.to is not None else os.environ.get(args.to_env, "")
    if not url:
        raise _UsageError(f"environment variable {args.to_env} is not set")
    problem = url_problem(url, config.journal.allow_weak_tls)
    if problem is not None:
        raise _UsageError(f"the target URL: {problem}")
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


def _audit_command(args: argparse.Namespace, config: Config, out: TextIO, err: TextIO) -> int:
    key = config.audit.require_key(config.path)
    if args.audit_command == "fingerprint":
        if sys.stdin.isatty():
            value = getpass.getpass("secret (not echoed): ", stream=err)
        else:
            value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise _UsageError("no secret on stdin")
        log = AuditLog(key)
        print_ = json.dumps({"fingerprint": log.fingerprint(Secret(value))}) if args.json \
            else log.fingerprint(Secret(value))
        out.write(print_ + "\n")
        return EXIT_OK
    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise _UsageError(f"not a file: {', '.join(missing)}")
    checkpoint_file = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint_file is None and config.audit.file is not None \
            and config.audit.file.resolve() in [f.resolve() for f in files]:
        checkpoint_file = checkpoint_path(config.audit.file)
    checkpoint = Checkpoint.load(checkpoint_file) if checkpoint_file else None
    kept = _journal_checkpoints(config, key, files) if args.journal else []
    problem, count = verify_chain(chain_key(key.reveal().encode()), files, checkpoint, kept)
    if args.json:
        out.write(json.dumps({"ok": problem is None, "records": count, "problem": None
                              if problem is None else dataclasses.asdict(problem),
                              **({"journal_checkpoints": len(kept)} if args.journal else {})})
                  + "\n")
    elif problem is None:
        out.write(f"ok: {count} record(s) verified"
                  + (f", up to the checkpoint's seq {checkpoint.seq}" if checkpoint else "")
                  + (f", and the journal's seq {kept[-1].seq}" if kept else "")
                  + ("; the journal keeps no checkpoint of this log" if args.journal
                     and not kept else "")
                  + "\n")
    else:
        out.write(f"TAMPERED {problem} ({count} record(s) verified before it)\n")
    return EXIT_OK if problem is None else EXIT_FAILED


def _journal_checkpoints(config: Config, key: Secret, files: list[Path]) -> list[Checkpoint]:
    """The checkpoints the configured journal keeps of the log ``files`` make up: the
    configured file log among them (``[audit] file`` or a file sink), else the newest file."""
    configured = [config.audit.file] if config.audit.file is not None else []
    configured += [s.path for s in config.audit.sinks if s.type == "file"]
    given = {f.resolve() for f in files}
    live = next((p for p in configured if p.resolve() in given), files[-1])
    journal = _open_journal(config)
    try:
        kept = journal.audit_checkpoints(log_id(live), checkpoint_key_id(key.reveal().encode()))
    finally:
        journal.close()
    return [Checkpoint(c.seq, c.chain) for c in kept]


def _json_default(value: object) -> str:
    """What the JSON log shows for a value JSON cannot carry: its text, redacted."""
    return redact(str(value))


def _setup_logging(verbose: bool, stream: TextIO, log_format: str = "console") -> None:
    """Operational log lines on ``stream``: timestamped (ISO 8601, UTC), redacted, and in
    ``log_format`` (``console`` or ``json``)."""
    install_log_safety()
    level = logging.DEBUG if verbose else logging.WARNING
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(default=_json_default)
    else:
        console = structlog.dev.ConsoleRenderer(colors=False)

        def renderer(logger: Any, method: str, event_dict: structlog.typing.EventDict) -> str:
            # The console shows objects by repr, which redact_processor does not see.
            return redact(console(logger, method, event_dict))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _select(config: Config, args: argparse.Namespace) -> list[str]:
    if args.all and args.clients:
        raise _UsageError("give client names or --all, not both")
    if args.all or (not args.clients and getattr(args, "all_by_default", False)):
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
            audit = _open_audit(config, audit_stdout or sys.stdout)
        else:
            audit = AuditLog(generate_secret())  # no sink: nothing is ever written
        stack.callback(audit.close)
        journal = _open_journal(config)
        stack.callback(journal.close)
        if audited:  # the last checkpoint is recorded before the journal closes
            audit.record_checkpoints(journal)
            stack.callback(audit.stop_checkpoints)
        adapters = Adapters(config)
        stack.callback(adapters.close)
        yield Engine(config, adapters, journal, audit, actor=actor)


def _open_audit(config: Config, stdout: TextIO) -> AuditLog:
    try:
        return AuditLog.from_config(config, stream=stdout if config.audit.stdout else None)
    except OSError as exc:
        raise ConfigError([ConfigProblem(
            str(config.path), "audit.file",
            f"cannot open {config.audit.file}: {exc.strerror or exc}")]) from exc


def _open_journal(config: Config) -> interfaces.Journal:
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


def _each(names: list[str], run: Callable[[str], Outcome]) -> list[Outcome]:
    """Run every client in isolation: one failing client never stops the others."""
    return [_one(name, run) for name in names]


def _one(name: str, run: Callable[[str], Outcome]) -> Outcome:
    """``run(name)``, with any error but a closed output pipe turned into a failed outcome."""
    log = structlog.get_logger("rotator.cli")
    try:
        outcome = run(name)
    except RotatorError as exc:
        log.debug("client_failed", client=name, exc_info=True)
        outcome = Outcome(name, False, "failed", redact(str(exc)))
    except BrokenPipeError:
        raise
    except Exception as exc:  # a bug must not stop the other clients either
        log.debug("unexpected_error", client=name, exc_info=True)
        outcome = Outcome(name, False, "failed",
                          f"unexpected error {type(exc).__name__}: "
                          f"{redact(str(exc))} (run with -v for the traceback)")
    if not outcome.ok:
        log.debug("client_outcome", client=name, action=outcome.action,
                  rotation_id=outcome.rotation_id, message=outcome.message,
                  details=outcome.details)
    return outcome


def _each_parallel(names: list[str], run: Callable[[str], Outcome], *, workers: int,
                   group: Callable[[str], str], per_group: int) -> list[Outcome]:
    """:func:`_each` on up to ``workers`` threads, at most ``per_group`` clients of one
    ``group`` (their IdP) at once; the outcomes come back in the order of ``names``.

    A client waiting for its IdP lets a client of another IdP go first. A closed output
    pipe or an interrupt stops handing out clients; the running ones finish.
    """
    waiting = list(names)
    running: Counter[str] = Counter()
    outcomes: dict[str, Outcome] = {}
    raised: list[BaseException] = []
    turn = threading.Condition()

    def next_name() -> str | None:
        with turn:
            while True:
                if not waiting:
                    return None
                name = next((n for n in waiting if running[group(n)] < per_group), None)
                if name is not None:
                    waiting.remove(name)
                    running[group(name)] += 1
                    return name
                turn.wait()

    def work() -> None:
        while (name := next_name()) is not None:
            try:
                outcomes[name] = _one(name, run)
            except BaseException as exc:  # a closed pipe: stop, and say so in the caller
                with turn:
                    raised.append(exc)
                    waiting.clear()
            finally:
                with turn:
                    running[group(name)] -= 1
                    turn.notify_all()

    threads = [threading.Thread(target=work, name=f"rotator-worker-{i}")
               for i in range(min(workers, len(names)))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # Ctrl-C: start no other client; the running ones finish
        with turn:
            waiting.clear()
        raise
    if raised:
        raise raised[0]
    return [outcomes[name] for name in names]


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
        idp = row["idp_status"]
        out.write(f"  idp {row['idp']}: "
                  + ("reachable" if idp["reachable"] else f"error: {idp['error']}") + "\n")
        for key, facts in row["stores"].items():
            if "error" in facts:
                out.write(f"  store {key}: error: {facts['error']}\n")
            else:
                out.write(f"  store {key}: current={'yes' if facts['has_current'] else 'no'}"
                          f" rotation={facts['current_rotation_id'] or '-'}"
                          f" pending={facts['pending_rotation_id'] or '-'}"
                          f" previous={'yes' if facts['has_previous'] else 'no'}\n")
        when = f", next run {row['next_run']}" if row["next_run"] else ", no schedule"
        reason = f" ({row['reason']})" if row["reason"] else ""
        out.write(f"  daemon: {row['condition']}{reason}{when}\n")
        if row.get("secret_expires_at"):
            out.write(f"  secret expires {row['secret_expires_at']}\n")
        for consumer in row.get("consumers", ()):
            uses = {True: "current secret", False: "another secret", None: "not compared yet"}
            out.write(f"  consumer {consumer['instance']}: {consumer['fingerprint']} "
                      f"({uses[consumer['current']]}), seen {consumer['seen_at']}\n")
        last = row["last_rotation"]
        if last:
            out.write(f"  last rotation {last['id']}: {last['state']} by {last['actor']} at "
                      f"{last['updated_at']}" + (f" ({last['error']})" if last["error"] else "")
                      + "\n")


def _daemon_view(engine: Engine, name: str) -> dict[str, Any]:
    """``name``'s condition and next run by the daemon's rule, as ``rotator run`` reports it.

    From the journal; the primary store's facts are read only for a client the journal never
    saw rotate (through the engine's adapters, already open).
    """
    from rotator.daemon.records import load_record

    def current_since(_config: Config, client: ClientConfig) -> datetime | None:
        try:
            target = client.primary
            return engine.adapters.store(target.store).facts(target.location).current_since
        except RotatorError:
            return None  # status already reports the store's error

    record = load_record(engine.journal, engine.config, engine.config.clients[name],
                         facts=current_since)
    from rotator.daemon import shared

    if shared.supported(engine.journal):  # a shared journal: as every daemon's API says
        found = shared.client_facts(engine.journal, [name]) or {}
        if name in found:
            record = shared.shared_record(record, found[name])
    state = record.state(engine.clock())

    def at(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    from rotator.consumers import consumer_rows

    return {"condition": state.condition.value, "reason": state.reason,
            "next_run": at(state.next_run), "failures": state.failures,
            "next_attempt": at(state.next_attempt), "retire_after": at(state.retire_after),
            "secret_expires_at": at(state.secret_expires_at),
            "consumers": consumer_rows(engine.config.state_dir, engine.config.clients[name],
                                       engine.clock())}


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
    _setup_logging(args.verbose, err, args.log_format)
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
            return _audit_command(args, config, out, err)
        if args.command == "journal":
            return _journal_command(args, config, out)
        names = _select(config, args)
        # Audit lines share stdout only when it is not a JSON document.
        with open_engine(config, audit_stdout=err if args.json else out,
                         audited=args.command != "status") as engine:
            if args.command == "rotate" and args.due:
                from rotator.daemon.service import due_clients

                names = due_clients(config, engine.journal, names, engine.clock())
            if args.command == "status":
                rows = [{**engine.status(n), **_daemon_view(engine, n)} for n in names]
                _print_status(rows, args.json, out)
                return EXIT_FAILED if any(r["error"] for r in rows) else EXIT_OK
            if args.command == "rotate":
                requested = engine.clock()  # before any lock is awaited: see Engine.rotate

                def rotate(n: str) -> Outcome:
                    return engine.rotate(n, dry_run=args.dry_run,
                                         abandon_pending=args.abandon_pending,
                                         requested_at=requested, wait=args.wait,
                                         force=args.force)

                if args.parallel > 1:
                    outcomes = _each_parallel(
                        names, rotate, workers=args.parallel,
                        group=lambda n: config.clients[n].idp,
                        per_group=config.daemon.idp_concurrency)
                else:
                    outcomes = _each(names, rotate)
                if args.all:  # a grace period still running is not a failure of --all
                    outcomes = [dataclasses.replace(o, ok=True) if o.action == "waiting" else o
                                for o in outcomes]
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
