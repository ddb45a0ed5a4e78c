"""What ``rotator config check`` imports: no store SDK, yet a missing one is still reported."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rotator.registry import AdapterImportError, load_adapter_class

CONFIG = """
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "audit.key"

[stores.bao]
type = "vault"
url = "https://127.0.0.1:8200"
token_file = "bao.token"

[idps.kc]
type = "keycloak"
url = "https://127.0.0.1:8443"
realm = "r"
admin_client_id = "rotator-admin"
admin_client_secret_file = "admin.secret"

[clients.svc]
idp = "kc"
client_id = "svc"
stores = [{store = "bao", path = "apps/svc"}]
"""


class TestConfigCheckImports:
    """config check of a Vault configuration loads neither hvac nor requests."""

    def test_no_hvac(self, tmp_path: Path) -> None:
        for name, value in (("audit.key", "k" * 44), ("bao.token", "t"), ("admin.secret", "a")):
            (tmp_path / name).write_text(value)
            (tmp_path / name).chmod(0o600)
        (tmp_path / "rotator.toml").write_text(CONFIG)
        script = textwrap.dedent("""
            import io, sys
            from rotator.cli import run
            out, err = io.StringIO(), io.StringIO()
            code = run(["config", "check", "--config", "rotator.toml"], out, err)
            print(code, out.getvalue().strip())
            print(sorted({m.split(".")[0] for m in sys.modules} & {"hvac", "requests"}))
        """)
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, text=True,
                              capture_output=True, check=True)
        first, loaded = done.stdout.splitlines()
        assert first.startswith("0 ") and "ok" in first, done.stdout + done.stderr
        assert loaded == "[]"


class TestMissingSdk:
    """A Vault store whose SDK is not installed is named, with the extra to install."""

    def test_missing_hvac(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = importlib.util.find_spec

        def find_spec(name: str, *args: object) -> object:
            return None if name == "hvac" else real(name, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        with pytest.raises(AdapterImportError, match=r"missing \(hvac\).*rotator\[vault\]"):
            load_adapter_class("store", "vault")
