"""``rotator run``: the daemon process around :class:`~rotator.daemon.service.Service`.

- One daemon per state directory: an ``flock`` on ``<state_dir>/daemon.lock`` (released by
  the kernel when the process dies) makes a second one refuse to start, naming the first.
- SIGTERM / SIGINT: take no more triggers, let each running rotation reach its next journal
  step (at most ``[daemon] shutdown_timeout``), exit 0. What is left open is resumed at the
  next start.
- SIGHUP: reload the configuration. An invalid one is rejected with every problem logged
  and the running one kept; a client removed while its rotation is open is finished.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

from rotator.audit import AuditLog
from rotator.config import Config, load_config
from rotator.daemon.service import Service
from rotator.errors import ConfigError, RotatorError

log = structlog.get_logger("rotator.daemon")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DaemonRunning(RotatorError):
    """Another daemon holds the state directory."""


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


class Daemon:
    """Runs a service until told to stop; reloads on request."""

    def __init__(self, config: Config, service: Service, *,
                 load: Callable[[Path], Config] = load_config) -> None:
        self.config = config
        self.service = service
        self._load = load
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()

    def reload(self) -> bool:
        """Load the configuration file again; keep the running one if it is invalid."""
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
        """Start the service and serve until stopped; returns the exit code (0)."""
        self.service.start()
        log.info("daemon_started", pid=os.getpid(), clients=len(self.config.clients))
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                self.reload()
        log.info("daemon_stopping", timeout=self.config.daemon.shutdown_timeout)
        clean = self.service.stop(self.config.daemon.shutdown_timeout)
        log.info("daemon_stopped", clean=clean)
        return EXIT_OK


def main(config: Config, out: TextIO, err: TextIO, *, verbose: bool = False) -> int:
    """``rotator run``: the daemon in the foreground until SIGTERM or SIGINT."""
    if not verbose:  # the daemon reports what it does; the CLI's default is quieter
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with instance_lock(config.state_dir):
            audit = AuditLog(config.audit.require_key(config.path), file=config.audit.file,
                             stdout=config.audit.stdout)
            try:
                service = Service(config, audit=audit)
                daemon = Daemon(config, service)
                daemon.install_signals()
                code = daemon.run()
                service.close()
                return code
            finally:
                audit.close()
    except DaemonRunning as exc:
        err.write(f"rotator: {exc}\n")
        return EXIT_FAILED
