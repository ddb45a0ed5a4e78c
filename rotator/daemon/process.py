"""``rotator run``: the daemon process around :class:`~rotator.daemon.service.Service`.

- One daemon per state directory: an ``flock`` on ``<state_dir>/daemon.lock`` (released by
  the kernel when the process dies) makes a second one refuse to start, naming the first.
- SIGTERM / SIGINT: take no more triggers, let each running rotation reach its next journal
  step (at most ``[daemon] shutdown_timeout``), exit 0. What is left open is resumed at the
  next start.
- SIGHUP: reload the configuration. An invalid one is rejected with every problem logged
  and the running one kept; a client removed while its rotation is open is finished. The
  admin API's callers (``[[api.tokens]]``, ``[api.jwt]``) are replaced at once; a changed
  ``[api]`` listen address or TLS files need a restart.
- The admin API (:mod:`rotator.daemon.api`) and ``/metrics`` are served on ``[api] listen``
  once the scheduler runs, and stopped first on SIGTERM, so no trigger arrives at a service
  that is stopping. Every route but ``/healthz`` needs a caller, so a configuration with
  neither ``[[api.tokens]]`` nor ``[api.jwt]`` runs the scheduler without the API (logged as
  ``api_disabled``).
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from rotator.audit import AuditLog
from rotator.config import ApiConfig, Config, load_config
from rotator.daemon.model import Observer, RotationService
from rotator.daemon.service import Service
from rotator.errors import ConfigError, RotatorError
from rotator.interfaces import Journal
from rotator.journal import open_journal

if TYPE_CHECKING:  # imported on use: the API needs the ``daemon`` extra
    from fastapi import FastAPI

    from rotator.daemon.api_server import ApiServer

log = structlog.get_logger("rotator.daemon")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DaemonRunning(RotatorError):
    """Another daemon holds the state directory."""


class ApiUnavailable(RotatorError):
    """The admin API cannot start: address in use, bad TLS files, the extra not installed."""


@contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir``'s daemon lock; ``DaemonRunning`` if another process holds it."""
    path = state_dir / "daemon.lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RotatorError(f"cannot open the daemon lock {path}: {exc.strerror}") from exc
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise RotatorError(f"daemon lock {path} belongs to another user; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DaemonRunning(
                f"another rotator daemon (pid {holder}) is running on state directory "
                f"{state_dir}; stop it first or give this one its own state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _has_callers(api: ApiConfig) -> bool:
    return bool(api.tokens) or api.jwt is not None


class AdminApi:
    """The admin API of a running daemon: started after the scheduler, stopped before it.

    Needs the ``daemon`` extra (FastAPI, uvicorn, prometheus-client) only when a caller is
    configured. :meth:`start` raises :class:`ApiUnavailable`.
    """

    def __init__(self, service: RotationService, audit: AuditLog | None,
                 metrics: Any = None) -> None:
        self._service = service
        self._audit = audit
        self._metrics = metrics
        self._app: FastAPI | None = None
        self._server: ApiServer | None = None
        self._api: ApiConfig | None = None

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.port

    def start(self, api: ApiConfig) -> None:
        self._api = api
        if not _has_callers(api):
            log.warning("api_disabled", reason="no [[api.tokens]] and no [api.jwt]: every "
                        "route but /healthz needs a caller, so the API is not served")
            return
        try:
            from rotator.daemon.api import ApiServerError, create_app, serve
            from rotator.daemon.auth import Authenticator
        except ImportError as exc:
            raise ApiUnavailable(f"the admin API needs FastAPI and uvicorn ({exc.name} is "
                                 "missing): pip install 'rotator[daemon]'") from None
        self._app = create_app(self._service, auth=Authenticator.from_config(api),
                               audit=self._audit, metrics=self._metrics)
        try:
            self._server = serve(self._app, (api.host, api.port), cert_file=api.cert_file,
                                 key_file=api.key_file, insecure_http=api.insecure_http)
        except ApiServerError as exc:
            self._app.state.authenticator.close()
            self._app = None
            raise ApiUnavailable(str(exc)) from None

    def reload(self, api: ApiConfig) -> None:
        """Use ``api``'s callers from now on; start the API if it was off for want of one."""
        if self._server is None or self._app is None:
            if _has_callers(api):
                self.start(api)
            return
        from rotator.daemon.auth import Authenticator

        # The old one is not closed: a call under way may still be checking a JWT with it.
        self._app.state.authenticator = Authenticator.from_config(api)
        log.info("api_callers_reloaded", tokens=len(api.tokens), jwt=api.jwt is not None)
        before = self._api
        if before is not None and (before.host, before.port, before.cert_file,
                                   before.key_file, before.insecure_http) != (
                api.host, api.port, api.cert_file, api.key_file, api.insecure_http):
            log.warning("api_restart_needed", listening=before.listen,
                        reason="[api] listen, TLS files and insecure_http change only at "
                               "the next start")
        self._api = api

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.stop(timeout)
            self._server = None
            log.info("api_stopped")
        if self._app is not None:
            self._app.state.authenticator.close()
            queue = getattr(self._app.state, "audit_queue", None)
            if queue is not None:  # the read calls' events still queued, before audit.close
                queue.close()
            self._app = None


class Daemon:
    """Runs a service (and its admin API) until told to stop; reloads on request."""

    def __init__(self, config: Config, service: Service, *,
                 load: Callable[[Path], Config] = load_config,
                 api: AdminApi | None = None, audit: AuditLog | None = None) -> None:
        self.config = config
        self.service = service
        self.api = api
        self._audit = audit
        self._load = load
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()

    def reload(self) -> bool:
        """Reopen the audit files (logrotate sends SIGHUP too), then load the configuration
        file again; keep the running one if it is invalid."""
        if self._audit is not None:
            self._audit.reopen()
        try:
            config = self._load(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("configuration_rejected", file=problem.file, key=problem.key,
                          reason=problem.reason)
            log.error("reload_rejected", problems=len(exc.problems),
                      keeping=str(self.config.path))
            return False
        if config.state_dir != self.config.state_dir:
            log.error("reload_rejected", key="rotator.state_dir",
                      reason="the state directory cannot change while running; restart")
            return False
        self.service.reload(config)
        if self.api is not None:
            try:
                self.api.reload(config.api)
            except ApiUnavailable as exc:
                log.error("api_reload_failed", error=str(exc))
        self.config = config
        return True

    def request_stop(self, *_: Any) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self, *_: Any) -> None:
        self._reload.set()
        self._wake.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def run(self) -> int:
        """Start the service and its API, serve until stopped; returns the exit code.

        Raises :class:`ApiUnavailable` (the service stopped again) if the API cannot start.
        """
        # The deferred store facts are read once the API listens: ready sooner, and the
        # reads do not share the interpreter with the API's start.
        self.service.start(hold_facts=True)
        try:
            if self.api is not None:
                try:
                    self.api.start(self.config.api)
                except ApiUnavailable:
                    self.service.stop(self.config.daemon.shutdown_timeout)
                    raise
        finally:
            self.service.release_facts()
        log.info("daemon_started", pid=os.getpid(), clients=len(self.config.clients),
                 api=self.api.port if self.api is not None else None)
        settled = False
        while not self._stop.is_set():
            settled = _settle_heap(settled, self.service)
            self._wake.wait(1.0)
            self._wake.clear()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                self.reload()
        log.info("daemon_stopping", timeout=self.config.daemon.shutdown_timeout)
        if self.api is not None:  # first: no trigger may reach a stopping service
            self.api.stop()
        clean = self.service.stop(self.config.daemon.shutdown_timeout)
        log.info("daemon_stopped", clean=clean)
        return EXIT_OK


def _settle_heap(settled: bool, service: Service) -> bool:
    """Move what start-up built (configuration, every client's record, the app) out of the
    garbage collector's sight once, when every client's store facts are read.

    Those objects live as long as the daemon; left in the oldest generation, each full
    collection walks all of them again: with 10,000 clients 80-120 ms, during which no API
    call is answered (measured with ``gc.callbacks`` in ``bench/bench_daemon.py``: three
    such pauses while one page-through of ``GET /v1/clients`` ran). Frozen
    (:func:`gc.freeze`), a full collection walks only what came after. Returns whether
    that is done.
    """
    if settled or not service.facts_read:
        return settled
    gc.freeze()
    return True


def main(config: Config, out: TextIO, err: TextIO, *, verbose: bool = False) -> int:
    """``rotator run``: the daemon in the foreground until SIGTERM or SIGINT."""
    if not verbose:  # the daemon reports what it does; the CLI's default is quieter
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with instance_lock(config.state_dir):
            audit = AuditLog.from_config(
                config, stream=sys.stdout if config.audit.stdout else None)
            checkpoints: Journal | None = None
            try:
                # Checkpoints of the audit chain, on a journal connection of their own.
                checkpoints = open_journal(config)
                audit.record_checkpoints(checkpoints)
                metrics = _metrics()
                service = Service(config, audit=audit, observer=metrics)
                daemon = Daemon(config, service, api=AdminApi(service, audit, metrics),
                                audit=audit)
                daemon.install_signals()
                try:
                    return daemon.run()
                finally:
                    service.close()
            finally:
                audit.stop_checkpoints()
                if checkpoints is not None:
                    checkpoints.close()
                audit.close()
    except DaemonRunning as exc:
        err.write(f"rotator: {exc}\n")
        return EXIT_FAILED
    except ApiUnavailable as exc:  # names the [api] setting or the missing extra
        err.write(f"rotator: {exc}\n")
        return EXIT_USAGE


def _metrics() -> Observer | None:
    """The daemon's metrics, or None without prometheus-client (the ``daemon`` extra)."""
    try:
        from rotator.daemon.metrics import Metrics
    except ImportError:
        log.warning("metrics_disabled", reason="prometheus-client is not installed; "
                    "pip install 'rotator[daemon]'")
        return None
    return Metrics()
