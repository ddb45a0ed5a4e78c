"""The ocsf and cef audit formats, and the leak scan over every format: each record is
well formed for its format, sealed in the chain, and free of any secret value."""

from __future__ import annotations

import io
import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from rotator import __version__
from rotator.audit import CATALOGUE, AuditLog, bound
from rotator.audit.catalogue import CONTEXT_FIELDS
from rotator.audit.chain import chain_key, verify
from rotator.secrets import Secret

KEY = secrets.token_urlsafe(32)

#: OCSF 1.1 required attributes: the base event's, and each class's own.
OCSF_BASE_REQUIRED = {"activity_id", "category_uid", "class_uid", "severity_id", "time",
                      "type_uid", "metadata"}
OCSF_CLASS_REQUIRED = {3004: {"entity"}, 6003: {"actor", "api", "src_endpoint"}}
OCSF_CATEGORY = {3004: 3, 6003: 6}

#: A CEF header field: anything but an unescaped pipe.
_HEADER = r"((?:[^|\\]|\\[|\\])*)"
CEF_LINE = re.compile(rf"CEF:0\|{_HEADER}\|{_HEADER}\|{_HEADER}\|{_HEADER}\|{_HEADER}\|"
                      rf"(\d|10)\|(.*)$")
#: One extension: a key, then a value with every =, \ and newline escaped.
CEF_EXTENSION = re.compile(r"([A-Za-z0-9]+)=((?:[^=\\\n]|\\[=\\nr])*?)(?= [A-Za-z0-9]+=|$)")

HOSTILE = 'pipe|equals=back\\slash\nnewline "quote"'


def _fields(name: str) -> dict[str, Any]:
    values: dict[str, Any] = {"outcome": "failure", "duration_ms": 7, "error": HOSTILE,
                              "status": 403, "source_ip": "127.0.0.1", "method": "POST",
                              "caller": "ci", "count": 1, "stores": ["a"], "scopes": ["x"]}
    return {f: values.get(f, f"v-{f}") for f in CATALOGUE[name].fields | CONTEXT_FIELDS}


def _lines(format_: str, name: str, **fields: Any) -> list[str]:
    stream = io.StringIO()
    log = AuditLog(Secret(KEY), stream=stream, format=format_)
    log.event(name, **(fields or _fields(name)))
    log.event(name, **(fields or _fields(name)))
    return stream.getvalue().splitlines()


def _verifies(lines: list[str], tmp_path: Path) -> bool:
    file = tmp_path / "log"
    file.write_text("\n".join(lines) + "\n")
    problem, count = verify(chain_key(KEY.encode()), [file])
    return problem is None and count == len(lines)


class TestOcsf:
    """Each event is an OCSF event of its class with every required attribute."""

    @pytest.mark.parametrize("name", sorted(CATALOGUE))
    def test_event(self, name: str, tmp_path: Path) -> None:
        lines = _lines("ocsf", name)
        record = json.loads(lines[0])
        spec = CATALOGUE[name]
        assert record["class_uid"] == spec.ocsf_class
        assert OCSF_BASE_REQUIRED | OCSF_CLASS_REQUIRED[spec.ocsf_class] <= set(record)
        assert record["category_uid"] == OCSF_CATEGORY[spec.ocsf_class]
        assert record["type_uid"] == record["class_uid"] * 100 + record["activity_id"]
        assert {"name", "vendor_name", "version"} <= set(record["metadata"]["product"])
        assert record["metadata"]["version"] and isinstance(record["time"], int)
        assert record["severity_id"] in (1, 3, 4) and record["status_id"] == 2
        if spec.ocsf_class == 6003:
            assert record["api"]["operation"] and record["activity_id"] == 1  # POST: Create
        assert list(record)[-1] == "unmapped"
        assert _verifies(lines, tmp_path)


class TestCef:
    """Each event is one CEF line: eight header fields, pipes and backslashes escaped in
    the header, equals signs, backslashes and newlines escaped in extension values."""

    @pytest.mark.parametrize("name", sorted(CATALOGUE))
    def test_event(self, name: str, tmp_path: Path) -> None:
        lines = _lines("cef", name)
        assert len(lines) == 2
        match = CEF_LINE.fullmatch(lines[0])
        assert match, lines[0]
        vendor, product, version, event_id, title, severity, extensions = match.groups()
        assert (vendor, product, event_id, version) == ("rotator", "rotator", name, __version__)
        assert title == CATALOGUE[name].meaning and int(severity) >= 6  # failure: warning
        pairs = CEF_EXTENSION.findall(extensions)
        assert " ".join(f"{k}={v}" for k, v in pairs) == extensions
        ext = dict(pairs)
        assert ext["act"] == name and ext["outcome"] == "failure"
        assert ext["msg"] == (HOSTILE.replace("\\", "\\\\").replace("=", "\\=")
                              .replace("\n", "\\n"))
        assert _verifies(lines, tmp_path)

    def test_pipe_in_a_header_field_is_escaped(self) -> None:
        from rotator.audit.formats import _cef_header
        assert _cef_header("a|b\\c") == "a\\|b\\\\c"


class TestNoSecretInAnyFormat:
    """A live secret value that reaches an audit field, raw or encoded, is in no format."""

    @pytest.mark.parametrize("format_", ["json", "ocsf", "cef"])
    def test_leak_scan(self, format_: str) -> None:
        value = secrets.token_urlsafe(24) + '="|\\'
        secret = Secret(value)
        with bound(client="app", rotation_id=f"echo {value}"):
            lines = _lines(format_, "rotation_failed", step="stage", outcome="failure",
                           error=f"IdP said: {json.dumps(value)} and {value}")
        text = "\n".join(lines)
        core = value[:24]
        assert core not in text and "**********" in text
        assert secret
