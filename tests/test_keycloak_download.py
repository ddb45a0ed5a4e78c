"""The Keycloak download for the test servers: where Maven puts it and what an error says."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from servers import ServerError, keycloak_dist

VERSION = "0.0.0-test"


def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int) -> Path:
    """An ``mvn`` first on PATH that records its arguments, prints colour codes and
    downloads nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args_file = tmp_path / "mvn-args"
    mvn = bin_dir / "mvn"
    mvn.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > {args_file}
printf '\\033[1;31m[ERROR]\\033[m something went wrong\\n'
exit {exit_code}
""")
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return args_file


class TestKeycloakDownload:
    """Maven downloads into the cache's own repository, and a failed download names the path
    it checked, without terminal escape codes."""

    def test_success_without_the_zip_names_the_path(self, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        args_file = fake_mvn(tmp_path, monkeypatch, exit_code=0)
        cache = tmp_path / "cache"
        with pytest.raises(ServerError) as info:
            keycloak_dist(VERSION, cache_dir=cache)
        zip_path = (cache / "m2" / "org" / "keycloak" / "keycloak-quarkus-dist" / VERSION
                    / f"keycloak-quarkus-dist-{VERSION}.zip")
        message = str(info.value)
        assert f"{zip_path} does not exist" in message
        assert "\x1b" not in message and "[ERROR] something went wrong" in message
        args = args_file.read_text().splitlines()
        assert f"-Dmaven.repo.local={cache / 'm2'}" in args
        assert "--batch-mode" in args

    def test_failure_names_the_repository(self, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        fake_mvn(tmp_path, monkeypatch, exit_code=1)
        cache = tmp_path / "cache"
        with pytest.raises(ServerError) as info:
            keycloak_dist(VERSION, cache_dir=cache)
        assert f"into {cache / 'm2'} (exit 1)" in str(info.value)
        assert "\x1b" not in str(info.value)
