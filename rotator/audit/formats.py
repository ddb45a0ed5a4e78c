"""How an audit event is written: ``json`` (ECS, the default), ``ocsf`` or ``cef``.

Every record is one JSON object on one line. ECS fields are nested objects, never dotted
keys, and no name is both a string and an object (the old flat ``"event": "<name>"`` beside
``event.action`` was one, and Elasticsearch refused such records). Rotator's own fields sit
under ``rotator``, which is always the last key, so the chain (:mod:`rotator.audit.chain`) can
seal a line by appending to it. :func:`flatten` turns a record back into the flat view
(``event`` is the action name, rotator's fields at the top) that scripts and tests read.

``ocsf`` writes OCSF 1.1 events: the secret lifecycle as Entity Management (3004), admin API
calls as API Activity (6003), rotator's own fields under ``unmapped`` (always last, for the
chain's seal). ``cef`` writes ``CEF:0|rotator|rotator|<version>|<event>|<name>|<severity>|``
followed by extensions, header and extension values escaped as the CEF specification says.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from datetime import datetime
from typing import Any

from rotator import __version__
from rotator.audit.catalogue import (
    API_ACTIVITY,
    API_ACTIVITY_BY_METHOD,
    OTHER,
    EventSpec,
)

ECS_VERSION = "8.11.0"

#: Fields an event may pass that have an ECS home: name -> path in the document.
_ECS_HOMES: dict[str, tuple[str, ...]] = {
    "outcome": ("event", "outcome"),
    "error": ("error", "message"),
    "reason": ("event", "reason"),
    "caller": ("user", "name"),
    "source_ip": ("source", "address"),
    "method": ("http", "request", "method"),
    "status": ("http", "response", "status_code"),
}
#: Present (as None when unknown) in the flat view of every record, as they always were.
_API_FIELDS = frozenset({"caller", "source_ip", "method", "status", "reason"})
_OUTCOMES = ("success", "failure", "unknown")


def ecs_document(spec: EventSpec, fields: dict[str, Any]) -> dict[str, Any]:
    """The ECS document of one event; ``fields`` holds ``@timestamp`` and the event's fields."""
    doc: dict[str, Any] = {"@timestamp": fields.pop("@timestamp"),
                           "message": spec.meaning,
                           "ecs": {"version": ECS_VERSION},
                           "log": {"level": spec.severity_for(fields.get("outcome"))},
                           "event": {"kind": "event", "category": [spec.category],
                                     "type": [spec.type], "action": spec.name,
                                     "module": "rotator", "dataset": "rotator.audit"}}
    rotator: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        home = _ECS_HOMES.get(name)
        if name == "outcome" and value not in _OUTCOMES:
            home = None
        if name == "duration_ms" and isinstance(value, int | float):
            doc["event"]["duration"] = int(value * 1_000_000)  # ECS: nanoseconds
            continue
        if home is None:
            rotator[name] = value
            continue
        if name == "source_ip" and _is_ip(value):
            doc["source"] = {"ip": value}
        node = doc
        for part in home[:-1]:
            node = node.setdefault(part, {})
        node[home[-1]] = value
    doc["rotator"] = rotator  # last: the chain seals the line by appending to it
    return doc


#: The ECS document's keys written before ``event``'s own extras, per (spec, log level).
_ECS_HEADS: dict[tuple[EventSpec, str], str] = {}


def _ecs_head(spec: EventSpec, level: str) -> str:
    head = _ECS_HEADS.get((spec, level))
    if head is None:
        doc = {"message": spec.meaning, "ecs": {"version": ECS_VERSION},
               "log": {"level": level},
               "event": {"kind": "event", "category": [spec.category], "type": [spec.type],
                         "action": spec.name, "module": "rotator",
                         "dataset": "rotator.audit"}}
        head = "," + render_json(doc)[1:-2]  # open: the event's extras follow
        if len(_ECS_HEADS) < 1024:  # bounded: specs are few, but callers may make their own
            _ECS_HEADS[(spec, level)] = head
    return head


def ecs_json(spec: EventSpec, fields: dict[str, Any]) -> str:
    """``render_json(ecs_document(spec, fields))``, the same bytes, built faster: the parts
    every event of ``spec`` shares are encoded once, each field's value on its own.
    ``fields`` is left as it was."""
    event: dict[str, Any] = {}  # event.outcome, event.reason, event.duration
    others: dict[str, Any] = {}  # the other ECS homes, in the order they first appear
    rotator: list[str] = []
    for name, value in fields.items():
        if value is None or name == "@timestamp":
            continue
        home = _ECS_HOMES.get(name)
        if name == "outcome" and value not in _OUTCOMES:
            home = None
        if name == "duration_ms" and isinstance(value, int | float):
            event["duration"] = int(value * 1_000_000)  # ECS: nanoseconds
            continue
        if home is None:
            rotator.append(f"{_json_str(name)}:{_json_value(value)}")
            continue
        if home[0] == "event":
            event[home[1]] = value
            continue
        if name == "source_ip" and _is_ip(value):
            others["source"] = {"ip": value}
        node = others
        for part in home[:-1]:
            node = node.setdefault(part, {})
        node[home[-1]] = value
    parts = ['{"@timestamp":', _json_value(fields["@timestamp"]),
             _ecs_head(spec, spec.severity_for(fields.get("outcome")))]
    for name, value in event.items():
        parts.append(f",{_json_str(name)}:{_json_value(value)}")
    parts.append("}")
    for name, value in others.items():
        parts.append(f",{_json_str(name)}:{_ENCODER.encode(value)}")
    parts.append(',"rotator":{')
    parts.append(",".join(rotator))
    parts.append("}}")
    return "".join(parts)


def _json_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _json_str(value)
    if kind is int:
        return int.__repr__(value)
    return _ENCODER.encode(value)


def _is_ip(value: object) -> bool:
    """Whether ``value`` is an IP address (``source.ip`` takes nothing else)."""
    return isinstance(value, str) and _parses_as_ip(value)


@functools.lru_cache(maxsize=1024)
def _parses_as_ip(value: str) -> bool:
    """Remembered for the callers' addresses seen last: an API call's event asks about one
    of a few addresses, and parsing one costs more than the rest of its ECS document."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


#: What the encoder writes for a string (``ensure_ascii=False``): the C function it uses.
_json_str = json.encoder.encode_basestring


def render_json(doc: dict[str, Any]) -> str:
    return _ENCODER.encode(doc)  # one encoder, not one built per call as json.dumps does


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """The flat view of an ECS record: ``event`` is the action name, ``outcome``, ``error``
    and the other ECS-homed fields under their short names, rotator's fields at the top."""
    flat: dict[str, Any] = {"@timestamp": record.get("@timestamp"),
                            "message": record.get("message"),
                            "event": record.get("event", {}).get("action")}
    for name, path in _ECS_HOMES.items():
        node: Any = record
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None or name in _API_FIELDS:
            flat[name] = node
    duration = record.get("event", {}).get("duration")
    if duration is not None:
        flat["duration_ms"] = duration / 1_000_000
    flat.update(record.get("rotator", {}))
    return flat


FORMATS = ("json", "ocsf", "cef")
OCSF_VERSION = "1.1.0"
_OCSF_SEVERITY = {"info": 1, "warning": 3, "error": 4}
_OCSF_STATUS = {"success": 1, "failure": 2}
_OCSF_ACTIVITY_NAMES = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 10: "Activate",
                        99: "Other"}
_CEF_SEVERITY = {"info": 3, "warning": 6, "error": 8}


def _epoch_ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


def ocsf_document(spec: EventSpec, fields: dict[str, Any]) -> dict[str, Any]:
    """The OCSF event of one event; ``fields`` holds ``@timestamp`` and the event's fields."""
    fields = {k: v for k, v in fields.items() if v is not None}
    timestamp = fields.pop("@timestamp")
    outcome = fields.get("outcome")
    severity = spec.severity_for(outcome)
    activity = spec.ocsf_activity
    if spec.ocsf_class == API_ACTIVITY:
        activity = API_ACTIVITY_BY_METHOD.get(str(fields.get("method")), OTHER)
    doc: dict[str, Any] = {
        "class_uid": spec.ocsf_class, "category_uid": spec.ocsf_class // 1000,
        "activity_id": activity, "activity_name": _OCSF_ACTIVITY_NAMES.get(activity, "Other"),
        "type_uid": spec.ocsf_class * 100 + activity, "time": _epoch_ms(timestamp),
        "severity_id": _OCSF_SEVERITY[severity], "severity": severity.capitalize()
        if severity != "warning" else "Medium",
        "status_id": _OCSF_STATUS.get(str(outcome), 0),
        "status": str(outcome).capitalize() if outcome in _OCSF_STATUS else "Unknown",
        "message": spec.meaning,
        "metadata": {"version": OCSF_VERSION, "log_name": "audit", "event_code": spec.name,
                     "product": {"name": "rotator", "vendor_name": "rotator",
                                 "version": __version__}},
    }
    if "error" in fields:
        doc["status_detail"] = fields["error"]
    if spec.ocsf_class == API_ACTIVITY:
        doc["actor"] = {"user": {"name": str(fields.get("caller") or "anonymous")}}
        doc["api"] = {"operation": f"{fields.get('method', '-')} {fields.get('route', '-')}"}
        source = str(fields.get("source_ip", "unknown"))
        doc["src_endpoint"] = {"ip": source} if _is_ip(source) else {"hostname": source}
        doc["http_request"] = {"http_method": fields.get("method"),
                               "url": {"path": fields.get("route")}}
        if "status" in fields:
            doc["http_response"] = {"code": fields["status"]}
    else:
        doc["actor"] = {"user": {"name": str(fields.get("actor", "unknown"))}}
        doc["entity"] = {"name": str(fields.get("client", "unknown")),
                         "type": "OAuth client secret"}
        if "rotation_id" in fields:
            doc["entity"]["uid"] = str(fields["rotation_id"])
    doc["unmapped"] = fields  # last: the chain seals the line by appending to it
    return doc


def _cef_header(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace(
        "\n", " ").replace("\r", " ")


def _cef_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return (text.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n")
            .replace("\r", "\\r"))


#: rotator field -> CEF extension key; fields without one become csN/csNLabel pairs.
_CEF_KEYS = {"outcome": "outcome", "error": "msg", "reason": "reason", "caller": "suser",
             "source_ip": "src", "method": "requestMethod", "route": "request",
             "duration_ms": "cn1"}
_CEF_CUSTOM = ("client", "rotation_id", "step", "store", "new_fingerprint", "idp")


def cef_line(spec: EventSpec, fields: dict[str, Any]) -> str:
    """The CEF line of one event; ``fields`` holds ``@timestamp`` and the event's fields."""
    fields = {k: v for k, v in fields.items() if v is not None}
    severity = _CEF_SEVERITY[spec.severity_for(fields.get("outcome"))]
    header = "|".join(_cef_header(v) for v in (
        "rotator", "rotator", __version__, spec.name, spec.meaning, severity))
    ext = [f"rt={_epoch_ms(fields.pop('@timestamp'))}", f"act={_cef_value(spec.name)}"]
    if "duration_ms" in fields:
        ext.append("cn1Label=durationMs")
    if "actor" in fields and "caller" not in fields:
        ext.append(f"suser={_cef_value(fields.pop('actor'))}")
    for name, key in _CEF_KEYS.items():
        if name in fields:
            if key == "src" and not _is_ip(fields[name]):
                key = "shost"
            ext.append(f"{key}={_cef_value(fields.pop(name))}")
    for number, name in enumerate(_CEF_CUSTOM, 1):
        if name in fields:
            ext.append(f"cs{number}={_cef_value(fields.pop(name))}")
            ext.append(f"cs{number}Label={name}")
    for name, value in fields.items():  # the rest: rotator-prefixed custom keys
        key = "rotator" + "".join(part.capitalize() for part in name.split("_"))
        ext.append(f"{key}={_cef_value(value)}")
    return f"CEF:0|{header}|{' '.join(ext)}"
