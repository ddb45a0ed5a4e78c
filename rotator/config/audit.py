"""Checking the audit log's files and ``[[audit.sinks]]`` entries."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rotator._files import UnsafeFile, check_private_dir
from rotator.config.model import AuditSink
from rotator.config.network import _is_loopback, url_problem
from rotator.config.problems import _Problems
from rotator.config.schema import (
    _AUDIT_HTTP_SETTINGS,
    _AUDIT_SINK_SETTINGS,
    _AUDIT_SYSLOG_SETTINGS,
    _INSECURE_OK,
    _NAME,
)
from rotator.settings import check_settings


def _check_private_dir(path: Path, key: str, report: Any) -> None:
    """Report ``path`` under ``key`` if it exists and other users own or may write it."""
    if not os.path.lexists(path):
        return  # created private (0700) when first used
    try:
        check_private_dir(path)
    except UnsafeFile as exc:
        report(key, str(exc))
    except OSError as exc:
        report(key, f"cannot check {path}: {exc.strerror}")


def _audit_sinks(raw: Any, default_format: str, problems: _Problems, base: Path,
                 env: Mapping[str, str] | None, *, check_files: bool,
                 spool_dir: Path = Path("state/audit-spool")) -> list[AuditSink]:
    """The ``[[audit.sinks]]`` entries; every problem reported under ``audit.sinks[i]``."""
    if not isinstance(raw, list):
        problems.reporter("audit")("sinks", "must be an array of tables: [[audit.sinks]]")
        return []
    sinks: list[AuditSink] = []
    for i, entry in enumerate(raw):
        report = problems.reporter(f"audit.sinks[{i}]")
        if not isinstance(entry, dict):
            report("", "must be a table")
            continue
        if entry.get("type") in ("syslog", "http"):
            remote = _remote_sink(entry, default_format, report, base, env,
                                  [e.get("name") for e in raw[:i] if isinstance(e, dict)],
                                  spool_dir, resolve=check_files)
            if remote is not None:
                sinks.append(remote)
            continue
        settings = check_settings(entry, _AUDIT_SINK_SETTINGS, report, base_dir=base,
                                  environ=env)
        if not settings.get("path") or not settings.get("type"):
            continue
        path = Path(settings["path"])
        if any(s.path == path for s in sinks):
            report("path", f"another sink already writes {path}")
            continue
        if check_files:
            _check_audit_file(path, lambda _key, reason, report=report: report("path", reason))
        sinks.append(AuditSink(settings["type"], path, settings.get("format") or default_format))
    return sinks


def _remote_sink(entry: Mapping[str, Any], default_format: str, report: Any, base: Path,
                 env: Mapping[str, str] | None, earlier_names: list[Any], spool_dir: Path,
                 *, resolve: bool) -> AuditSink | None:
    """A syslog or http ``[[audit.sinks]]`` entry, every problem reported; None if any."""
    kind = entry["type"]
    schema = _AUDIT_SYSLOG_SETTINGS if kind == "syslog" else _AUDIT_HTTP_SETTINGS
    problems: list[tuple[str, str]] = []

    def note(key: str, reason: str) -> None:
        problems.append((key, reason))
        report(key, reason)

    s = check_settings(entry, schema, note, base_dir=base, environ=env,
                       resolve_secrets=resolve)
    name = s.get("name")
    if name is not None and not _NAME.match(name):
        note("name", "letters, digits, '.', '_' and '-' only, at most 64")
    elif name is not None and name in earlier_names:
        note("name", f"another sink is already named {name!r}")
    if bool(s.get("cert_file")) != bool(s.get("key_file")):
        note("cert_file" if not s.get("cert_file") else "key_file",
             "a client certificate needs both cert_file and key_file")
    for key in ("ca_file", "cert_file", "key_file"):
        if s.get(key) and not os.path.isfile(s[key]):
            note(key, f"{s[key]} does not exist or is not a file")
    for key in ("spool_max_bytes", "batch_size"):
        if s.get(key) is not None and s[key] < 1:
            note(key, "must be at least 1")
    if kind == "syslog" and s.get("address"):
        host, _, port = str(s["address"]).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            note("address", f"expected host:port, got {s['address']!r}")
        elif s.get("transport") != "tls" and not s.get("allow_cleartext") and \
                not _is_loopback(host.strip("[]")):
            note("transport", f"{s['transport']} to {host} would send the audit trail in "
                              "cleartext: use transport = \"tls\", or set allow_cleartext = "
                              "true in this table if you mean it")
    if kind == "http" and s.get("url"):
        problem = url_problem(s["url"], bool(s.get(_INSECURE_OK)))
        if problem:
            note("url", problem)
        if s.get("api") == "hec" and "token_env" not in entry and "token_file" not in entry:
            note("token_env", "Splunk HEC needs a token: set token_env or token_file")
    if problems or name is None:
        return None
    return AuditSink(kind, spool_dir / f"{name}.jsonl", s.get("format") or default_format,
                     name=name, settings=s)


def _check_audit_file(path: Path, report: Any) -> None:
    """Report an existing audit log that is a symlink, another user's, or open to others."""
    _check_private_dir(path.parent, "file", report)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        report("file", f"cannot check {path}: {exc.strerror}")
        return
    if stat.S_ISLNK(info.st_mode):
        report("file", f"{path} is a symbolic link; point the setting at the real file")
    elif not stat.S_ISREG(info.st_mode):
        report("file", f"{path} is not a regular file")
    elif info.st_uid != os.geteuid():
        report("file", f"{path} belongs to another user (uid {info.st_uid})")
    elif info.st_mode & 0o077:
        report("file", f"{path} is open to other users (mode "
                       f"{stat.S_IMODE(info.st_mode):o}); chmod 600 it")
