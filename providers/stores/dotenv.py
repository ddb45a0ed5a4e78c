"""The dotenv format of env files: parsing and rendering that keeps every other line.

A file may be sourced by a shell (``set -a; . file``), so values are written in single
quotes, where the shell expands nothing, and lines are split on ``\n`` only (see
:mod:`providers.stores.env`, the store that reads and writes such files).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$", "`": "`"}


def _lines(text: str) -> list[str]:
    """The lines of ``text``, split on "\\n" only.

    ``str.splitlines`` also splits on \\x0b, \\x0c, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029;
    a value holding one of those must stay one value, not become a second variable.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _single_quoted(raw: str) -> str | None:
    """The value of shell single-quoted text such as ``'it'\\''s'``, or None if ``raw`` is
    not only that (a trailing comment aside)."""
    parts: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "'":
            end = raw.find("'", i + 1)
            if end < 0:
                return None
            parts.append(raw[i + 1:end])
            i = end + 1
        elif raw.startswith("\\'", i):
            parts.append("'")
            i += 2
        else:
            break
    rest = raw[i:].strip()
    if rest and not rest.startswith("#"):
        return None
    return "".join(parts)


def _closing_quote(raw: str) -> int:
    """Index of the quote that closes the one at ``raw[0]``, or -1."""
    quote, i = raw[0], 1
    while i < len(raw):
        if quote == '"' and raw[i] == "\\":
            i += 2
            continue
        if raw[i] == quote:
            return i
        i += 1
    return -1


def _unquote(raw: str) -> str:
    if raw[:1] == "'":
        single = _single_quoted(raw)
        if single is not None:
            return single
    end = _closing_quote(raw) if raw[:1] == '"' else -1
    rest = raw[end + 1:].strip() if end > 0 else ""
    if end > 0 and (not rest or rest.startswith("#")):  # a trailing comment is allowed
        body = raw[1:end]
        out: list[str] = []
        chars = iter(body)
        for ch in chars:
            if ch == "\\":
                nxt = next(chars, "\\")
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
            else:
                out.append(ch)
        return "".join(out)
    return raw.split(" #", 1)[0].rstrip()


def _quote(value: str) -> str:
    """``value`` quoted so that a shell sourcing the file expands nothing in it."""
    if "\n" in value or "\r" in value:
        # A line cannot hold these: escape them in double quotes, with every character the
        # shell would expand there (\\ " $ `) escaped too. The store never writes such a
        # value itself; this keeps one a person put in the file when it moves to PREVIOUS.
        body = (value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
                .replace("`", "\\`").replace("\n", "\\n").replace("\r", "\\r"))
        return f'"{body}"'
    return "'" + value.replace("'", "'\\''") + "'"


def parse_env(text: str) -> dict[str, str]:
    """Parse dotenv text into a mapping; comments and blank lines are skipped."""
    values: dict[str, str] = {}
    for line in _lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            values[match.group(1)] = _unquote(match.group(2))
    return values


def render_env(text: str, updates: Mapping[str, str | None]) -> str:
    """Apply ``updates`` to dotenv ``text``: set, or delete where the value is None.

    Every other line, comments included, is kept as it was.
    """
    pending = dict(updates)
    lines: list[str] = []
    for line in _lines(text):
        match = _LINE.match(line) if line.strip() and not line.lstrip().startswith("#") else None
        if match and match.group(1) in pending:
            value = pending.pop(match.group(1))
            if value is not None:
                # Keep "export " (and indentation): a file that is sourced must still export.
                lines.append(f"{line[:match.start(1)]}{match.group(1)}={_quote(value)}")
            continue
        if match and match.group(1) in updates:
            continue  # a later duplicate would win on reading and undo the update
        lines.append(line)
    lines.extend(f"{k}={_quote(v)}" for k, v in pending.items() if v is not None)
    return "\n".join(lines) + "\n" if lines else ""
