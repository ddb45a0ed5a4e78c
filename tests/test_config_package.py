"""rotator.config as a package: what it offered as one module is still importable from it."""

from __future__ import annotations

import importlib
from pathlib import Path

import rotator.config

#: Every public name the single-module ``rotator/config.py`` defined.
PUBLIC = (
    "API_ROLES", "AUTH_METHODS", "CONSUMER_ROLE", "DEFAULT_API_LISTEN", "MIN_API_TOKEN_LENGTH",
    "MIN_AUDIT_KEY_BYTES", "RETIRE_MODES", "AdapterConfig", "ApiConfig", "ApiToken",
    "AuditConfig", "AuditSink", "ClientConfig", "Config", "DaemonConfig", "JournalConfig",
    "JwtConfig", "StoreTarget", "is_loopback", "load_config", "parse_listen",
    "plain_http_refusal", "url_problem",
)


class TestPublicNames:
    """Every public name of the former rotator/config.py is exported by rotator.config."""

    def test_all_lists_them(self) -> None:
        assert sorted(rotator.config.__all__) == sorted(PUBLIC)

    def test_each_is_importable(self) -> None:
        module = importlib.import_module("rotator.config")
        for name in PUBLIC:
            assert getattr(module, name) is not None, name


class TestModuleSize:
    """Each module of the package stays under the style guide's 500 lines."""

    def test_under_500_lines(self) -> None:
        package = Path(rotator.config.__file__).parent
        for module in package.glob("*.py"):
            assert len(module.read_text().splitlines()) < 500, module.name
