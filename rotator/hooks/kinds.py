"""One attempt of each hook kind: run a command, POST a signed event, ask systemd.

Each function returns when the hook succeeded and raises :class:`HookFailed` (a
:class:`~rotator.errors.RotatorError`) with one redacted line when it did not. None of them
sees a secret value: the event carries fingerprints only, and a command gets a minimal
environment, not rotator's own (which holds the audit key, store tokens, signing keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from rotator import _deadline
from rotator.errors import RotatorError
from rotator.hooks.config import HookConfig
from rotator.secrets import Secret, redact

#: The request header carrying ``t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>``.
SIGNATURE_HEADER = "X-Rotator-Signature"
EVENT_ID_HEADER = "X-Rotator-Event-Id"
#: Variables of rotator's environment every command gets; nothing else unless ``pass_env``.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_TAIL = 300  # characters of a failing command's output kept for the error


class HookFailed(RotatorError):
    """A hook attempt did not succeed; the message says why, without secret values."""


Event = Mapping[str, Any]
HttpFactory = Callable[[HookConfig], httpx.Client]


def sign(key: Secret, body: bytes, timestamp: int) -> str:
    """The :data:`SIGNATURE_HEADER` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key.reveal().encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def check_signature(key: bytes, header: str, body: bytes, *, now: float,
                    tolerance: float = 300.0) -> bool:
    """Whether ``header`` signs ``body`` with ``key`` and is at most ``tolerance`` s old.

    What a receiver does (``docs/hooks.md`` shows it standalone).
    """
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def command_env(hook: HookConfig, event: Event,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command hook runs with: the event as ``ROTATOR_*`` variables."""
    source = os.environ if environ is None else environ
    env = {k: source[k] for k in (*BASE_ENV, *hook.pass_env) if k in source}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    for key, value in event.items():
        if value is not None and not isinstance(value, dict | list):
            env[f"ROTATOR_{key.upper()}"] = str(value)
    return env


def run_command(hook: HookConfig, event: Event) -> None:
    """Run the hook's argv (no shell) with :func:`command_env`; exit status 0 succeeds."""
    try:
        proc = subprocess.Popen(  # an argv from the configuration; never a shell
            list(hook.argv), env=command_env(hook, event), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise HookFailed(f"cannot run {hook.argv[0]}: {exc.strerror}") from exc
    try:
        output, _ = proc.communicate(timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        # The whole process group: a script's children must not outlive its timeout.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise HookFailed(f"{hook.argv[0]} did not finish within {hook.timeout:g}s; "
                         "killed") from None
    if proc.returncode != 0:
        # Redact before the cut (a secret straddling it would leak its end), then one line.
        tail = " ".join(redact(output.decode("utf-8", "replace")).split())[-_TAIL:]
        raise HookFailed(f"{hook.argv[0]} exited with status {proc.returncode}"
                         + (f": {tail}" if tail else ""))


def default_http(hook: HookConfig) -> httpx.Client:
    """TLS verification on unless the hook turns it off; no redirects followed; no
    keep-alive (the total deadline watches each request's own connection)."""
    return _deadline.client(hook.timeout, hook.tls_verify)


def post_event(hook: HookConfig, event: Event, *, clock: Callable[[], float] = time.time,
               http_factory: HttpFactory = default_http) -> None:
    """POST ``event`` as JSON, signed; any 2xx answer succeeds."""
    assert hook.url is not None
    assert hook.key is not None
    body = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "rotator-hook/1",
               SIGNATURE_HEADER: sign(hook.key, body, int(clock())),
               EVENT_ID_HEADER: str(event.get("event_id", ""))}
    try:
        with http_factory(hook) as http:
            response = _deadline.post(http, hook.url, content=body, headers=headers,
                                      deadline=hook.timeout)
    except httpx.HTTPError as exc:
        raise HookFailed(f"POST {_origin(hook.url)} failed: "
                         f"{redact(type(exc).__name__ + ': ' + str(exc))[:_TAIL]}") from None
    if not 200 <= response.status_code < 300:
        raise HookFailed(f"POST {_origin(hook.url)} answered {response.status_code}")


def run_systemd(hook: HookConfig, event: Event) -> None:
    """``systemctl [--user] ACTION -- UNIT`` through the systemctl found on PATH."""
    assert hook.unit is not None
    systemctl = shutil.which("systemctl", path=os.environ.get("PATH"))
    if systemctl is None:
        raise HookFailed("systemctl is not on PATH")
    argv = [systemctl, *(["--user"] if hook.user else []), hook.action, "--", hook.unit]
    run_command(HookConfig(name=hook.name, kind="command", on=hook.on, required=hook.required,
                           timeout=hook.timeout, attempts=1, backoff=0.0, argv=tuple(argv)),
                event)


def _origin(url: str) -> str:
    """Scheme, host and port of ``url``: the path may carry a token, so it is not shown."""
    parts = httpx.URL(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.host}{port}"


RUNNERS: dict[str, Callable[[HookConfig, Event], None]] = {
    "command": run_command, "systemd": run_systemd,
    "http": lambda hook, event: post_event(hook, event)}
