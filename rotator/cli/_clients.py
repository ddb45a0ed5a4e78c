"""The commands on clients: ``rotate``, ``verify``, ``retire`` and ``status``; each client
runs in isolation (one failing never stops the others), ``rotate --parallel`` on threads."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import structlog

from rotator.cli._engine import open_engine
from rotator.cli._parser import EXIT_FAILED, EXIT_OK, UsageError
from rotator.config import ClientConfig, Config
from rotator.engine import Engine, Outcome
from rotator.errors import RotatorError
from rotator.interfaces import Stage
from rotator.secrets import redact


def select(config: Config, args: argparse.Namespace) -> list[str]:
    if args.all and args.clients:
        raise UsageError("give client names or --all, not both")
    if args.all or (not args.clients and getattr(args, "all_by_default", False)):
        return list(config.clients)
    if not args.clients:
        raise UsageError(f"name at least one client or pass --all; configured: "
                          f"{', '.join(config.clients) or 'none'}")
    unknown = [c for c in args.clients if c not in config.clients]
    if unknown:
        raise UsageError(f"unknown client(s) {', '.join(unknown)}; configured: "
                          f"{', '.join(config.clients)}")
    return list(dict.fromkeys(args.clients))


def each(names: list[str], run: Callable[[str], Outcome]) -> list[Outcome]:
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


def each_parallel(names: list[str], run: Callable[[str], Outcome], *, workers: int,
                   group: Callable[[str], str], per_group: int) -> list[Outcome]:
    """:func:`each` on up to ``workers`` threads, at most ``per_group`` clients of one
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


def print_outcomes(outcomes: list[Outcome], as_json: bool, out: TextIO) -> int:
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


def print_status(rows: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
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


def daemon_view(engine: Engine, name: str) -> dict[str, Any]:
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


def client_command(args: argparse.Namespace, config: Config, out: TextIO, err: TextIO) -> int:
    """``rotate``, ``verify``, ``retire`` or ``status`` of the clients named in ``args``."""
    names = select(config, args)
    # Audit lines share stdout only when it is not a JSON document.
    with open_engine(config, audit_stdout=err if args.json else out,
                     audited=args.command != "status") as engine:
        if args.command == "rotate" and args.due:
            from rotator.daemon.service import due_clients

            names = due_clients(config, engine.journal, names, engine.clock())
        if args.command == "status":
            rows = [{**engine.status(n), **daemon_view(engine, n)} for n in names]
            print_status(rows, args.json, out)
            return EXIT_FAILED if any(r["error"] for r in rows) else EXIT_OK
        if args.command == "rotate":
            requested = engine.clock()  # before any lock is awaited: see Engine.rotate

            def rotate(n: str) -> Outcome:
                return engine.rotate(n, dry_run=args.dry_run,
                                     abandon_pending=args.abandon_pending,
                                     requested_at=requested, wait=args.wait,
                                     force=args.force)

            if args.parallel > 1:
                outcomes = each_parallel(
                    names, rotate, workers=args.parallel,
                    group=lambda n: config.clients[n].idp,
                    per_group=config.daemon.idp_concurrency)
            else:
                outcomes = each(names, rotate)
            if args.all:  # a grace period still running is not a failure of --all
                outcomes = [dataclasses.replace(o, ok=True) if o.action == "waiting" else o
                            for o in outcomes]
        elif args.command == "verify":
            outcomes = each(names, lambda n: engine.verify(n, Stage(args.stage)))
        else:
            outcomes = each(names, lambda n: engine.retire(n, now=args.now))
        return print_outcomes(outcomes, args.json, out)
