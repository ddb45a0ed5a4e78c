"""How an audit event is written: an ECS document (the ``json`` format).

Every record is one JSON object on one line. ECS fields are nested objects, never dotted
keys, and no name is both a string and an object (the old flat ``"event": "<name>"`` beside
``event.action`` was one, and Elasticsearch refused such records). Rotator's own fields sit
under ``rotator``, which is always the last key, so the chain (:mod:`rotator.audit.chain`) can
seal a line by appending to it. :func:`flatten` turns a record back into the flat view
(``event`` is the action name, rotator's fields at the top) that scripts and tests read.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from rotator.audit.catalogue import EventSpec

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


def _is_ip(value: object) -> bool:
    try:
        ipaddress.ip_address(str(value))
        return True
    except ValueError:
        return False


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str)


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
