"""rotator.cli as a package: what it offered as one module is still importable from it, and
each of its modules stays small."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import rotator.cli

#: The names importable from the single-module ``rotator/cli.py`` that callers use.
NAMES = ("run", "main", "open_engine", "_each_parallel", "_setup_logging", "EXIT_OK",
         "EXIT_FAILED", "EXIT_USAGE", "EXIT_BROKEN_PIPE", "DEFAULT_LOCK_WAIT", "LOG_FORMATS")


class TestNamesKept:
    """Every name callers imported from rotator/cli.py, and the console script, still work."""

    def test_each_is_importable(self) -> None:
        module = importlib.import_module("rotator.cli")
        for name in NAMES:
            assert getattr(module, name) is not None, name

    def test_console_script(self) -> None:
        pyproject = Path(rotator.cli.__file__).parents[2] / "pyproject.toml"
        scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
        assert scripts["rotator"] == "rotator.cli:main"


class TestModuleSize:
    """Each module of the package stays under the style guide's 500 lines."""

    def test_under_500_lines(self) -> None:
        package = Path(rotator.cli.__file__).parent
        modules = list(package.glob("*.py"))
        assert len(modules) > 1
        for module in modules:
            assert len(module.read_text().splitlines()) < 500, module.name
