"""Consumers tell the daemon which secret they use (``retire = "when_unused"``).

:class:`ConsumerReporter` sends, after a :class:`rotator.client.TokenClient` obtained a new
token, the keyed fingerprint of the secret it used (never the value) to
``POST /v1/clients/{name}/consumers`` of the daemon's API, with a bearer token of role
``consumer``. It is opt-in: :meth:`ConsumerReporter.from_env` builds one only when
``ROTATOR_REPORT_URL`` is set.

Environment (``*_FILE`` variants read the value from a file, which must not be readable by
others):

``ROTATOR_REPORT_URL``             the daemon's API base URL, e.g. ``https://rotator:8900``
``ROTATOR_REPORT_TOKEN[_FILE]``    a bearer token of role ``consumer``
``ROTATOR_REPORT_KEY[_FILE]``      the client's consumer fingerprint key, hex
                                   (``python -m rotator.consumers key``)
``ROTATOR_REPORT_INSTANCE``        this instance's id (default: hostname-pid-random)
``ROTATOR_REPORT_INSECURE_HTTP``   ``1`` allows plain http:// to a host other than loopback

A report that fails never fails the token fetch: the first failure is logged once
(``consumer_report_failed``), later reports are skipped for a backoff that doubles from
:data:`FIRST_BACKOFF` up to :data:`MAX_BACKOFF`, and the first success after failures is
logged (``consumer_report_recovered``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import structlog

from rotator import _deadline
from rotator.consumers import HOSTNAME_PATTERN, INSTANCE_PATTERN, consumer_fingerprint
from rotator.errors import ConfigError, ConfigProblem
from rotator.secrets import Secret

log = structlog.get_logger("rotator.client")

FIRST_BACKOFF = 30.0
MAX_BACKOFF = 600.0
#: Seconds a report may take in all (rotator._deadline: however slowly the daemon, or what
#: stands in its place, answers): it runs in the thread that refreshed the token.
REPORT_TIMEOUT = 2.0
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ConsumerReporter:
    """Reports this consumer's secret fingerprint to the daemon (see the module docstring)."""

    def __init__(self, url: str, client: str, token: Secret, key: bytes, *,
                 instance: str | None = None, http: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 timeout: float = REPORT_TIMEOUT) -> None:
        self.url = url.rstrip("/") + f"/v1/clients/{quote(client, safe='')}/consumers"
        self.client = client
        self._token = token
        self._key = key
        self.instance = instance or (f"c-{_hostname()}-{os.getpid()}-"
                                     f"{secrets.token_hex(3)}")[:128]
        if not re.match(INSTANCE_PATTERN, self.instance):
            raise ValueError("the consumer instance id must match " + INSTANCE_PATTERN)
        self._http = http if http is not None else _deadline.client(timeout)
        self._owns_http = http is None
        self._clock = clock
        self._timeout = timeout
        self._failures = 0
        self._skip_until = 0.0
        #: Reports sent, and failed (tests count them).
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_env(cls, client: str, environ: Mapping[str, str] | None = None,
                 **kwargs: object) -> ConsumerReporter | None:
        """A reporter from ``ROTATOR_REPORT_*``, or None when ``ROTATOR_REPORT_URL`` is unset.

        Raises ``ConfigError`` naming the variable when one is missing or unsafe.
        """
        env = os.environ if environ is None else environ
        url = env.get("ROTATOR_REPORT_URL")
        if not url:
            return None
        problems: list[ConfigProblem] = []
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(ConfigProblem("environment", "ROTATOR_REPORT_URL",
                                          "must be an https:// URL"))
        elif parts.scheme == "http" and parts.hostname not in _LOOPBACK \
                and env.get("ROTATOR_REPORT_INSECURE_HTTP") != "1":
            problems.append(ConfigProblem("environment", "ROTATOR_REPORT_URL",
                                          "plain http:// is allowed only to loopback; use "
                                          "https:// or set ROTATOR_REPORT_INSECURE_HTTP=1"))
        token = _value(env, "ROTATOR_REPORT_TOKEN", problems)
        key_hex = _value(env, "ROTATOR_REPORT_KEY", problems)
        key = b""
        if key_hex is not None:
            try:
                key = bytes.fromhex(key_hex.strip())
            except ValueError:
                problems.append(ConfigProblem("environment", "ROTATOR_REPORT_KEY",
                                              "must be hex (python -m rotator.consumers key)"))
        if problems:
            raise ConfigError(problems)
        assert token is not None
        return cls(url, client, Secret(token.strip()), key,
                   instance=env.get("ROTATOR_REPORT_INSTANCE") or None,
                   **kwargs)  # type: ignore[arg-type]

    def report(self, secret: Secret) -> bool:
        """Report that this consumer now uses ``secret``; never raises. True if sent."""
        now = self._clock()
        if now < self._skip_until:
            return False
        hostname = _hostname()
        body = {"instance": self.instance, "fingerprint": consumer_fingerprint(self._key, secret),
                "hostname": hostname if re.match(HOSTNAME_PATTERN, hostname) else None,
                "pid": os.getpid()}
        error: str | None = None
        try:
            response = _deadline.post(
                self._http, self.url, content=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {self._token.reveal()}",
                         "Content-Type": "application/json",
                         "User-Agent": "rotator-consumer/1"},
                deadline=self._timeout)
            if response.status_code != 204:
                error = f"the daemon answered HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"the daemon could not be reached ({type(exc).__name__})"
        if error is None:
            self.sent += 1
            if self._failures:
                log.info("consumer_report_recovered", client=self.client,
                         failures=self._failures)
            self._failures = 0
            return True
        self.failed += 1
        self._failures += 1
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (self._failures - 1))
        self._skip_until = now + backoff
        if self._failures == 1:
            log.warning("consumer_report_failed", client=self.client, error=error,
                        next_report_in=backoff)
        return False

    def close(self) -> None:
        if self._owns_http:
            self._http.close()


def _hostname() -> str:
    name = socket.gethostname()
    return "".join(c for c in name if c.isalnum() or c in "-._")[:253]


def _value(env: Mapping[str, str], name: str, problems: list[ConfigProblem]) -> str | None:
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if not path:
        problems.append(ConfigProblem("environment", name, f"required: set {name} or "
                                                           f"{name}_FILE"))
        return None
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(ConfigProblem(path, f"{name}_FILE", "must not be readable by "
                                                                "others (chmod 600)"))
            return None
        return Path(path).read_text().strip()
    except OSError as exc:
        problems.append(ConfigProblem(path, f"{name}_FILE", f"cannot read: {exc.strerror}"))
        return None


__all__ = ["ConsumerReporter"]
