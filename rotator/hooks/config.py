"""The ``[[clients.NAME.hooks]]``, ``[[defaults.hooks]]`` and ``[alerts]`` tables, checked.

Called by :func:`rotator.config.load_config`, which collects every problem (file, key path,
reason) with the rest of the file's. No secret is written in these tables: an HTTP hook's
signing key and the alert webhook's URL (a Slack URL is a credential) are named by
``*_env`` or ``*_file`` like every other secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotator.secrets import Secret
from rotator.settings import Report, Setting, check_settings

HOOK_KINDS = ("command", "http", "systemd")
#: When a hook runs: after the new secret became current, after the old one was retired.
STAGES = ("promoted", "retired")
SYSTEMD_ACTIONS = ("reload", "restart", "try-restart", "reload-or-restart",
                   "try-reload-or-restart")
ALERT_FORMATS = ("json", "slack")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A unit name as systemd spells it; never starts with '-', so it cannot become an option.
_UNIT = re.compile(r"^[A-Za-z0-9_.:@\\][A-Za-z0-9_.:@\\-]{0,254}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_KIND_KEYS = {
    "command": ("argv", "pass_env"),
    "http": ("url", "key_env", "key_file", "ca_file", "tls_verify", "allow_insecure_http"),
    "systemd": ("unit", "action", "user"),
}
HOOK_SETTINGS = (
    Setting("kind", required=True, choices=HOOK_KINDS, help="command, http or systemd"),
    Setting("name", help="unique among the client's hooks; defaults to KIND-N"),
    Setting("on", "list[str]", default=["promoted"], help="promoted, retired or both"),
    Setting("required", "bool", default=False,
            help="hold the old secret's retirement until this hook succeeded"),
    Setting("timeout", "duration", default=30.0),
    Setting("attempts", "int", default=3, help="tries per run, with backoff between them"),
    Setting("backoff", "duration", default=2.0, help="first pause between tries; doubles"),
    Setting("argv", "list[str]", help="command: program and arguments; no shell"),
    Setting("pass_env", "list[str]", default=[],
            help="command: variables of rotator's environment the command also gets"),
    Setting("url", help="http: where the signed event is POSTed"),
    Setting("key", secret=True, help="http: HMAC-SHA256 signing key"),
    Setting("ca_file", "path", help="http: trust this CA"),
    Setting("tls_verify", "bool", default=True),
    Setting("allow_insecure_http", "bool", default=False,
            help="http: accept http:// to a host other than this machine"),
    Setting("unit", help="systemd: the unit to reload or restart"),
    Setting("action", default="reload", choices=SYSTEMD_ACTIONS),
    Setting("user", "bool", default=False, help="systemd: the user's manager (--user)"),
)
ALERT_SETTINGS = (
    Setting("url", secret=True, required=True, help="alert webhook URL"),
    Setting("format", default="json", choices=ALERT_FORMATS,
            help="json (signed if key is set) or slack"),
    Setting("key", secret=True, help="HMAC-SHA256 key signing json alerts"),
    Setting("repeat", "duration", default=4 * 3600.0,
            help="send a condition that persists again after this long"),
    Setting("open_longer_than", "duration", default=6 * 3600.0,
            help="alert when a rotation is open this long (grace period not counted)"),
    Setting("expiring_within", "duration", default=14 * 86400.0,
            help="alert when the current secret expires at the IdP within this long"),
    Setting("check_every", "duration", default=60.0, help="how often the daemon checks"),
    Setting("timeout", "duration", default=10.0),
    Setting("ca_file", "path"),
    Setting("tls_verify", "bool", default=True),
    Setting("allow_insecure_http", "bool", default=False),
)


@dataclass(frozen=True)
class HookConfig:
    """One hook of one client (its own or one of ``[[defaults.hooks]]``)."""

    name: str
    kind: str
    on: tuple[str, ...]
    required: bool
    timeout: float
    attempts: int
    backoff: float
    argv: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    url: str | None = None
    key: Secret | None = None
    tls_verify: bool | str = True
    unit: str | None = None
    action: str = "reload"
    user: bool = False


@dataclass(frozen=True)
class AlertConfig:
    """The ``[alerts]`` table: one webhook and when conditions are (re)sent."""

    url: Secret | None  # None only when loaded for a consumer
    format: str
    key: Secret | None
    repeat: float
    open_longer_than: float
    check_every: float
    timeout: float
    tls_verify: bool | str
    expiring_within: float = 14 * 86400.0


UrlCheck = Callable[[str, bool], "str | None"]


def parse_hooks(raw: Any, prefix: str, reporter: Callable[[str], Report], *, base: Path,
                environ: Mapping[str, str], resolve: bool, url_problem: UrlCheck,
                taken: set[str] | None = None) -> tuple[HookConfig, ...]:
    """The hooks of ``raw`` (an array of tables at ``prefix``), each problem reported.

    ``taken`` holds names already used by the client's other hooks (and receives these).
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        parent, _, key = prefix.rpartition(".")
        reporter(parent)(key, f"must be an array of tables: [[{prefix}]]")
        return ()
    names = taken if taken is not None else set()
    hooks: list[HookConfig] = []
    for i, table in enumerate(raw):
        report = reporter(f"{prefix}[{i}]")
        if not isinstance(table, dict):
            report("", "must be a table")
            continue
        s = check_settings(table, HOOK_SETTINGS, report, base_dir=base, environ=environ,
                           resolve_secrets=resolve)
        kind = s.get("kind")
        if kind not in HOOK_KINDS:
            continue
        for key in table:
            owner = next((k for k, keys in _KIND_KEYS.items() if key in keys), kind)
            if owner != kind:
                report(key, f"a {kind} hook does not take {key!r} (a {owner} hook does)")
        name = s.get("name") or f"{kind}-{i + 1}"
        if not _NAME.match(name):
            report("name", "must be letters, digits, '.', '_' or '-'")
        elif name in names:
            report("name", f"another hook of this client is named {name!r}; name each hook")
        names.add(name)
        on = s.get("on") or []
        bad = [stage for stage in on if stage not in STAGES]
        if bad or not on:
            report("on", f"must list promoted, retired or both; got {on!r}")
        if s.get("required") and "promoted" not in on:
            report("required", "holds the old secret's retirement, so it needs "
                               "on = [\"promoted\", ...]")
        if s.get("attempts") is not None and s["attempts"] < 1:
            report("attempts", "must be at least 1")
        if s.get("timeout") == 0:
            report("timeout", "must be longer than zero")
        if kind == "command":
            argv = s.get("argv")
            if not argv:
                report("argv", "required: the program and its arguments, e.g. "
                               "[\"/usr/local/bin/reload-app\", \"--graceful\"]")
            elif any("\0" in arg for arg in argv):
                report("argv", "must not contain a NUL character")
            for var in s.get("pass_env") or []:
                if not _ENV_NAME.match(var):
                    report("pass_env", f"{var!r} is not an environment variable name")
        elif kind == "http":
            url = s.get("url")
            if not url:
                report("url", "required: where the event is POSTed")
            else:
                problem = url_problem(url, bool(s.get("allow_insecure_http")))
                if problem:
                    report("url", problem)
            if "key_env" not in table and "key_file" not in table:
                report("key_env", "required: name the environment variable holding the "
                                  "HMAC-SHA256 signing key (or use key_file)")
            elif s.get("key") is not None and len(s["key"].reveal().encode()) < 32:
                report("key_env" if "key_env" in table else "key_file",
                       "the signing key must be at least 32 bytes; generate one with: "
                       "openssl rand -hex 32")
            _check_ca_file(s, report, resolve)
        elif kind == "systemd":
            unit = s.get("unit")
            if not unit:
                report("unit", "required: the unit to reload, e.g. \"myapp.service\"")
            elif not _UNIT.match(unit):
                report("unit", f"{unit!r} is not a systemd unit name")
        if any(st.key not in s for st in HOOK_SETTINGS if not st.secret):
            continue  # a setting failed its check (reported)
        tls: bool | str = s["ca_file"] if s.get("ca_file") else s["tls_verify"]
        hooks.append(HookConfig(
            name=name, kind=kind, on=tuple(on), required=s["required"],
            timeout=s["timeout"], attempts=s["attempts"], backoff=s["backoff"],
            argv=tuple(s.get("argv") or ()), pass_env=tuple(s["pass_env"]), url=s.get("url"),
            key=s.get("key"), tls_verify=tls, unit=s.get("unit"), action=s["action"],
            user=s["user"]))
    return tuple(hooks)


def _check_ca_file(s: Mapping[str, Any], report: Report, resolve: bool) -> None:
    """A ``ca_file`` that is not there fails at the first send: say so now."""
    if resolve and s.get("ca_file") and not Path(s["ca_file"]).is_file():
        report("ca_file", f"{s['ca_file']} does not exist or is not a file")


def parse_alerts(raw: Any, report: Report, *, base: Path, environ: Mapping[str, str],
                 resolve: bool, url_problem: UrlCheck) -> AlertConfig | None:
    """The ``[alerts]`` table, or None when there is none; every problem reported."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        report("", "must be a table")
        return None
    s = check_settings(raw, ALERT_SETTINGS, report, base_dir=base, environ=environ,
                       resolve_secrets=resolve)
    url = s.get("url")
    if url is not None:
        # The URL is a secret: the reason names the key, never the value.
        problem = url_problem(url.reveal(), bool(s.get("allow_insecure_http")))
        if problem:
            given = "url_env" if "url_env" in raw else "url_file"
            report(given, "the webhook URL is not a valid URL"
                   if problem.startswith("not a valid URL") else f"the webhook URL: {problem}")
    _check_ca_file(s, report, resolve)
    for key in ("repeat", "check_every", "timeout"):
        if s.get(key) == 0:
            report(key, "must be longer than zero")
    if any(setting.key not in s for setting in ALERT_SETTINGS
           if not setting.secret):
        return None
    tls: bool | str = s["ca_file"] if s.get("ca_file") else s["tls_verify"]
    return AlertConfig(url=url, format=s["format"], key=s.get("key"), repeat=s["repeat"],
                       open_longer_than=s["open_longer_than"], check_every=s["check_every"],
                       timeout=s["timeout"], tls_verify=tls,
                       expiring_within=s["expiring_within"])
