"""The Lambda package's hashed lock file: every pin has hashes and none is below a floor."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent
LOCK = ROOT / "providers" / "lambda-requirements.txt"
FLOORS = {"h11": "0.16", "requests": "2.32.4", "urllib3": "2.5"}


def pins() -> dict[str, tuple[Version, int]]:
    """Name -> (pinned version, number of hashes) for every requirement in the lock."""
    found: dict[str, tuple[Version, int]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)(.*)$", line)
        if match:
            name = match.group(1).lower().replace("_", "-")
            found[name] = (Version(match.group(2)), match.group(3).count("--hash=sha256:"))
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]
            + project["optional-dependencies"]["aws"]]


class TestLambdaLock:
    """The lock pins every runtime dependency of rotator[aws], hashed, at or above its floor."""

    def test_every_pin_is_hashed(self) -> None:
        assert pins()
        assert [name for name, (_, hashes) in pins().items() if hashes == 0] == []

    def test_declared_dependencies_are_pinned_within_range(self) -> None:
        locked = pins()
        for requirement in declared():
            name = requirement.name.lower()
            assert name in locked, f"{name} is not in {LOCK.name}"
            assert requirement.specifier.contains(locked[name][0]), name

    @pytest.mark.parametrize(("name", "floor"), sorted(FLOORS.items()))
    def test_security_floors(self, name: str, floor: str) -> None:
        locked = pins()
        if name == "requests":  # only with the vault extra, which the Lambda does not use
            assert name not in locked or locked[name][0] >= Version(floor)
            return
        assert locked[name][0] >= Version(floor)

    @pytest.mark.parametrize(("name", "floor"), sorted(FLOORS.items()))
    def test_pyproject_floors(self, name: str, floor: str) -> None:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        every = project["dependencies"] + [r for extra in ("vault", "aws")
                                           for r in project["optional-dependencies"][extra]]
        specs = [Requirement(r).specifier for r in every if Requirement(r).name == name]
        assert specs, f"no floor for {name}"
        assert all(not s.contains(_below(floor)) for s in specs)


def _below(floor: str) -> str:
    """A version just under ``floor`` (e.g. 0.15.99 for 0.16)."""
    parts = [int(p) for p in floor.split(".")]
    parts[-1] -= 1
    return ".".join(str(p) for p in parts) + ".99"
