"""Collecting every problem found in the file, each with its key path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rotator.errors import ConfigProblem


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def reporter(self, prefix: str) -> Any:
        def report(key: str, reason: str) -> None:
            path = f"{prefix}.{key}" if prefix and key else prefix or key
            self.items.append(ConfigProblem(self.file, path, reason))
        return report


def _table(value: Any, key: str, problems: _Problems) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.reporter("")(key, "must be a table")
        return {}
    return value
