"""What status and the command line cost as the number of clients grows, counted not timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import providers.stores.env as env_module
from providers.stores.env import EnvStore


class TestEnvFileParsedOncePerVersion:
    """Reading the facts of many prefixes of one env file parses it once until it changes."""

    def test_facts_of_many_clients(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "creds.env"
        path.write_text("".join(f"C{i}_CLIENT_ID=c{i}\nC{i}_CLIENT_SECRET=s-{i}-secret\n"
                                for i in range(200)))
        parses: list[int] = []
        real = env_module.parse_env
        monkeypatch.setattr(env_module, "parse_env",
                            lambda text: parses.append(1) or real(text))
        store = EnvStore("env", {"file": str(path), "read_environ": False})
        store.start()
        assert all(store.facts(f"C{i}").has_current for i in range(200))
        assert len(parses) == 1
        path.write_text("C0_CLIENT_ID=c0\n")  # a new version of the file is read again
        assert not store.facts("C0").has_current
        assert len(parses) == 2


class TestCommandLineImports:
    """Importing rotator loads neither the asyncio client nor a vendor SDK."""

    def test_import_rotator(self) -> None:
        code = ("import sys, rotator, rotator.cli; print(sorted(m for m in "
                "('rotator.client_async', 'rotator.client.asyncio', 'hvac', 'boto3', 'botocore') "
                "if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == "[]"
