"""The audit event catalogue and the ECS json format: every event rotator emits is
catalogued, and every record of a full rotation is a valid ECS document."""

from __future__ import annotations

import ast
import io
import ipaddress
import json
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine import CAPS, make_rig

from rotator.audit import CATALOGUE, AuditLog, flatten
from rotator.audit.catalogue import CONTEXT_FIELDS, SEVERITIES, markdown_table
from rotator.interfaces import State
from rotator.secrets import Secret

ROOT = Path(__file__).resolve().parent.parent

#: The ECS 8.11 field reference for every ECS field the format writes: name -> type.
ECS_FIELDS = {
    "@timestamp": "date", "message": "match_only_text", "ecs.version": "keyword",
    "log.level": "keyword", "event.kind": "keyword", "event.category": "keyword[]",
    "event.type": "keyword[]", "event.action": "keyword", "event.outcome": "keyword",
    "event.duration": "long", "event.reason": "keyword", "event.module": "keyword",
    "event.dataset": "keyword", "error.message": "match_only_text", "user.name": "keyword",
    "source.ip": "ip", "source.address": "keyword", "http.request.method": "keyword",
    "http.response.status_code": "long",
}
#: ECS allowed values (event.kind, event.category, event.type, event.outcome) and which
#: event.type each event.category allows.
ECS_KINDS = {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error",
             "signal"}
ECS_CATEGORY_TYPES = {
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "web": {"access", "error", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "authentication": {"start", "end", "info"},
}
ECS_OUTCOMES = {"success", "failure", "unknown"}


def _leaves(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        assert "." not in key, f"dotted key {key!r}: ECS objects are nested"
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not name.startswith("rotator."):
            out |= _leaves(value, name + ".")
        else:
            out[name] = value
    return out


def _check_ecs(record: dict[str, Any]) -> None:
    assert list(record)[-1] == "rotator" and isinstance(record["rotator"], dict)
    for name, value in _leaves(record).items():
        if name.startswith("rotator."):
            continue
        kind = ECS_FIELDS.get(name)
        assert kind is not None, f"{name} is not in the ECS reference used here"
        if kind == "date":
            assert datetime.fromisoformat(value).tzinfo is not None
        elif kind == "long":
            assert isinstance(value, int) and not isinstance(value, bool), name
        elif kind == "ip":
            ipaddress.ip_address(value)
        elif kind == "keyword[]":
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), name
        else:
            assert isinstance(value, str), name
    event = record["event"]
    assert event["kind"] in ECS_KINDS and event["outcome"] in ECS_OUTCOMES
    for category in event["category"]:
        assert set(event["type"]) <= ECS_CATEGORY_TYPES[category]
    assert record["log"]["level"] in SEVERITIES


def _events_of_full_rotation(tmp_path: Path, caps: str) -> list[dict[str, Any]]:
    with make_rig(tmp_path, CAPS[caps]) as rig:
        assert rig.engine.rotate("app").ok
        rig.clock.now += timedelta(hours=2)
        rig.engine.retire("app")
        rig.engine.verify("app")
        file = rig.engine.config.audit.file
        assert file is not None
        return [json.loads(line) for line in file.read_text().splitlines()]


class TestEcsRecords:
    """Every record of a full rotation is an ECS document: known field names of the right
    types and allowed values, no dotted keys, no field both a string and an object."""

    @pytest.mark.parametrize("caps", list(CAPS))
    def test_full_rotation(self, tmp_path: Path, caps: str) -> None:
        records = _events_of_full_rotation(tmp_path, caps)
        names = {r["event"]["action"] for r in records}
        assert {"rotation_started", "rotation_completed", "credential_verified"} <= names
        for record in records:
            _check_ecs(record)
            spec = CATALOGUE[record["event"]["action"]]
            assert record["event"]["category"] == [spec.category]
            assert set(record["rotator"]) - {"seq", "chain"} <= spec.fields | CONTEXT_FIELDS
            assert record["rotator"]["client"] == "app"

    def test_flat_view_keeps_the_old_names(self, tmp_path: Path) -> None:
        first = flatten(_events_of_full_rotation(tmp_path, "chosen-overlap")[0])
        assert first["event"] == "rotation_started" and first["outcome"] == "success"
        assert first["client"] == "app" and first["rotation_id"].startswith("r-")


def _emitted_names() -> set[str]:
    """Every event name the engine, the Lambda and the API pass to the audit log."""
    names: set[str] = set()
    for path in [*(ROOT / "rotator" / "engine").glob("*.py"),
                 ROOT / "providers" / "aws_lambda.py",
                 *(ROOT / "rotator" / "daemon").glob("*.py"),
                 *(ROOT / "rotator" / "cli").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("event", "_timed") and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
            elif isinstance(first, ast.JoinedStr):  # f"rotation_{state}": every end state
                prefix = "".join(v.value for v in first.values
                                 if isinstance(v, ast.Constant) and isinstance(v.value, str))
                assert prefix == "rotation_", ast.unparse(first)
                names |= {f"rotation_{s}" for s in (State.COMPLETED, State.PROMOTED,
                                                    State.ROLLED_BACK, State.FAILED)}
    return names


class TestCatalogue:
    """Every event rotator emits is in the catalogue, and every catalogued event is whole."""

    def test_every_emitted_event_is_catalogued(self) -> None:
        names = _emitted_names()
        assert len(names) > 10
        assert names - set(CATALOGUE) == set()

    def test_every_entry_is_complete(self) -> None:
        for name, spec in CATALOGUE.items():
            assert re.fullmatch(r"[a-z_]+", name) and spec.meaning
            assert spec.type in ECS_CATEGORY_TYPES[spec.category], name
            assert spec.ocsf_class in (3004, 6003) and spec.severity in SEVERITIES


class TestEveryCataloguedEvent:
    """Each catalogued event, written with every field it may carry, is a valid ECS record."""

    @pytest.mark.parametrize("name", sorted(CATALOGUE))
    def test_event(self, name: str) -> None:
        stream = io.StringIO()
        log = AuditLog(Secret(secrets.token_hex(16)), stream=stream)
        values: dict[str, Any] = {"outcome": "failure", "duration_ms": 12, "error": "boom",
                                  "status": 403, "source_ip": "127.0.0.1", "method": "POST",
                                  "caller": "ci", "reason": "role too weak", "count": 1,
                                  "stores": ["a", "b"], "scopes": ["x"]}
        fields = {f: values.get(f, "v") for f in CATALOGUE[name].fields | CONTEXT_FIELDS}
        log.event(name, **fields)
        record = json.loads(stream.getvalue())
        _check_ecs(record)
        assert record["log"]["level"] in ("warning", "error")  # a failure is never info
        flat = flatten(record)
        assert {k: flat[k] for k in fields} == fields


class TestDocsTable:
    """docs/audit.md ends with the event table generated from the catalogue."""

    def test_table_is_current(self) -> None:
        assert (ROOT / "docs" / "audit.md").read_text().endswith(markdown_table())
