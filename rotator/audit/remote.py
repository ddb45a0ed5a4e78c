"""What a remote sink needs to know of a sealed record, in any format, and how sinks are built.

A spooled record is the line the local log holds (ECS or OCSF JSON, or CEF), sealed. A remote
sink reads back from it the event's time, name and severity (for the syslog header, the HEC
``time``) and, for JSON formats, the document itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.audit.spool import SpoolPolicy, SpoolSink, Transport

if TYPE_CHECKING:
    from rotator.config import AuditSink

_OCSF_SEVERITY = {1: "info", 3: "warning", 4: "error"}
_CEF_SEVERITY = {"3": "info", "6": "warning", "8": "error"}
#: A CEF header separator: a pipe after an even number of backslashes.
_CEF_SPLIT = re.compile(r"(?<!\\)((?:\\\\)*)\|")
_CEF_EXT = re.compile(r"([A-Za-z0-9]+)=((?:[^=\\]|\\.)*?)(?= [A-Za-z0-9]+=|$)")
_CEF_RT = re.compile(r"(?:^| )rt=(\d+)(?: |$)")


@dataclass(frozen=True)
class Described:
    """What a remote sink reads back from a record."""

    timestamp: datetime
    name: str
    severity: str  # info, warning, error
    #: The JSON document (json, ocsf); None for CEF, sent as text
    document: dict[str, Any] | None
    fields: dict[str, Any]


def describe(line: str) -> Described:
    """The time, event name, severity and document of a sealed record."""
    if line.startswith("CEF:"):
        parts = _cef_header(line)
        rt = _CEF_RT.search(parts[-1]) if len(parts) == 8 else None
        when = (datetime.fromtimestamp(int(rt[1]) / 1000, UTC) if rt
                else datetime.now(UTC))
        name = parts[4] if len(parts) == 8 else "unknown"
        severity = _CEF_SEVERITY.get(parts[6] if len(parts) == 8 else "", "info")
        return Described(when, name, severity, None,
                         _cef_fields(parts[7]) if len(parts) == 8 else {})
    try:
        return _described_json(json.loads(line))
    except (ValueError, TypeError, AttributeError, OverflowError, OSError):
        # not a record of rotator's: sent as text rather than blocking the spool
        return Described(datetime.now(UTC), "unknown", "info", None, {})


def _described_json(doc: dict[str, Any]) -> Described:
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    if "class_uid" in doc:  # OCSF
        when = datetime.fromtimestamp(int(doc.get("time", 0)) / 1000, UTC)
        return Described(when, str(doc.get("metadata", {}).get("event_code", "unknown")),
                         _OCSF_SEVERITY.get(int(doc.get("severity_id") or 1), "info"), doc,
                         dict(doc.get("unmapped", {})))
    stamp = str(doc.get("@timestamp", ""))
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        when = datetime.now(UTC)
    return Described(when, str(doc.get("event", {}).get("action", "unknown")),
                     str(doc.get("log", {}).get("level", "info")), doc,
                     dict(doc.get("rotator", {})))


def _cef_fields(extension: str) -> dict[str, Any]:
    """rotator's labelled custom strings (``csN``/``csNLabel``) of a CEF extension."""
    values = {k: re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), v)
              for k, v in _CEF_EXT.findall(extension)}
    return {values[f"{k}Label"]: v for k, v in values.items()
            if k.startswith("cs") and f"{k}Label" in values}


def _cef_header(line: str) -> list[str]:
    """The eight parts of a CEF line (header fields unescaped), the extension last."""
    parts: list[str] = []
    pos = 0
    for match in _CEF_SPLIT.finditer(line):
        if len(parts) == 7:
            break
        parts.append(line[pos:match.end() - 1])
        pos = match.end()
    parts.append(line[pos:])
    return [p.replace("\\|", "|").replace("\\\\", "\\") for p in parts[:7]] + parts[7:]


def open_remote(sink: AuditSink, spool_dir: Path, key: bytes) -> SpoolSink:
    """The spooled sink a ``[[audit.sinks]]`` entry of type syslog or http describes."""
    s = sink.settings
    transport: Transport
    if sink.type == "syslog":
        from rotator.audit.syslog import SyslogTransport
        transport = SyslogTransport.from_settings(s)
    else:
        from rotator.audit.http import HttpTransport
        transport = HttpTransport.from_settings(sink.name, sink.format, s)
    policy = SpoolPolicy(max_bytes=s.get("spool_max_bytes") or SpoolPolicy.max_bytes,
                         batch_size=s.get("batch_size") or SpoolPolicy.batch_size,
                         retry_max=s.get("retry_max") or SpoolPolicy.retry_max)
    try:
        return SpoolSink(sink.name, spool_dir, key, transport, policy)
    except BaseException:
        transport.close()
        raise
