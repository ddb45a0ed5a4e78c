"""Reading a secret file through symlinks (a Kubernetes secret volume) in rotator._files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from rotator._files import UnsafeFile, read_private_file, write_private_file
from rotator.settings import read_secret_file

NOBODY = 65534


def _k8s_volume(root: Path, value: str, stamp: str = "..2026_11_29_17_00_00.1") -> Path:
    """Lay out a volume as the kubelet does: token -> ..data/token, ..data -> ..<stamp>."""
    root.mkdir(mode=0o755)
    data = root / stamp
    data.mkdir(mode=0o755)
    (data / "token").write_text(value + "\n")
    (data / "token").chmod(0o400)
    (root / "..data").symlink_to(stamp)
    (root / "token").symlink_to("..data/token")
    return root / "token"


def _swap(root: Path, value: str, stamp: str) -> None:
    """The kubelet's atomic update: a new timestamped directory, then rename a new ..data."""
    data = root / stamp
    data.mkdir(mode=0o755)
    (data / "token").write_text(value)
    (data / "token").chmod(0o400)
    (root / "..data_tmp").symlink_to(stamp)
    os.replace(root / "..data_tmp", root / "..data")


class TestKubernetesSecretVolume:
    """A secret file reached through a Kubernetes-style chain of symlinks is read, before and
    after the kubelet's atomic ``..data`` swap."""

    def test_reads_through_the_chain(self, tmp_path: Path) -> None:
        value = secrets.token_urlsafe(24)
        link = _k8s_volume(tmp_path / "vol", value)
        assert read_secret_file(link).reveal() == value

    def test_reads_the_new_value_after_a_swap(self, tmp_path: Path) -> None:
        link = _k8s_volume(tmp_path / "vol", secrets.token_urlsafe(24))
        new = secrets.token_urlsafe(24)
        _swap(tmp_path / "vol", new, "..2026_11_29_18_00_00.2")
        assert read_secret_file(link).reveal() == new

    def test_absolute_link_to_a_private_file(self, tmp_path: Path) -> None:
        (tmp_path / "real").mkdir(mode=0o700)
        target = tmp_path / "real" / "secret"
        target.write_text("s3cret-value")
        target.chmod(0o600)
        (tmp_path / "link").symlink_to(target)
        assert read_private_file(tmp_path / "link") == b"s3cret-value"


class TestUnsafeLinksRefused:
    """A symlinked secret file is refused, with the reason, when someone else could swap a link
    or a directory on the way, or when the final file is not a private regular file."""

    def _refused(self, path: Path, *needles: str) -> None:
        with pytest.raises(ValueError, match=str(path)) as info:
            read_secret_file(path)
        for needle in needles:
            assert needle in str(info.value)

    def test_target_directory_writable_by_others(self, tmp_path: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        (shared / "secret").write_text("x")
        (shared / "secret").chmod(0o600)
        (tmp_path / "link").symlink_to(shared / "secret")
        self._refused(tmp_path / "link", str(shared), "mode 777", "swap")

    def test_link_in_a_group_writable_directory(self, tmp_path: Path) -> None:
        link = _k8s_volume(tmp_path / "vol", "x")
        (tmp_path / "vol").chmod(0o775)
        self._refused(link, str(tmp_path / "vol"), "mode 775")

    def test_directory_of_another_user(self, tmp_path: Path) -> None:
        link = _k8s_volume(tmp_path / "vol", "x")
        data = tmp_path / "vol" / "..2026_11_29_17_00_00.1"
        os.chown(data, NOBODY, NOBODY)
        self._refused(link, str(data), "another user")

    def test_group_readable_target(self, tmp_path: Path) -> None:
        link = _k8s_volume(tmp_path / "vol", "x")
        (tmp_path / "vol" / "..data" / "token").chmod(0o440)
        self._refused(link, "open to other users", "mode 440", "chmod 600")

    def test_target_of_another_user(self, tmp_path: Path) -> None:
        link = _k8s_volume(tmp_path / "vol", "x")
        os.chown(tmp_path / "vol" / "..data" / "token", NOBODY, NOBODY)
        self._refused(link, "belongs to another user")

    def test_link_to_a_fifo(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "fifo", 0o600)
        (tmp_path / "link").symlink_to(tmp_path / "fifo")
        self._refused(tmp_path / "link", "not a regular file")

    def test_link_to_a_device(self, tmp_path: Path) -> None:
        (tmp_path / "link").symlink_to("/dev/null")
        self._refused(tmp_path / "link", "not a regular file")

    def test_link_loop(self, tmp_path: Path) -> None:
        (tmp_path / "a").symlink_to("b")
        (tmp_path / "b").symlink_to("a")
        self._refused(tmp_path / "a", "more than 40 symbolic links")

    def test_plain_fifo_does_not_hang(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "fifo", 0o600)
        self._refused(tmp_path / "fifo", "not a regular file")


class TestWritesStillRefuseLinks:
    """Secret files rotator writes never follow a symlink, even one it would read through."""

    def test_write_replaces_the_link_not_the_target(self, tmp_path: Path) -> None:
        (tmp_path / "target").write_text("untouched")
        (tmp_path / "target").chmod(0o600)
        (tmp_path / "out").symlink_to(tmp_path / "target")
        write_private_file(tmp_path / "out", b"new")
        assert (tmp_path / "target").read_text() == "untouched"
        assert not (tmp_path / "out").is_symlink()

    def test_open_private_refuses_a_link(self, tmp_path: Path) -> None:
        from rotator._files import open_private

        (tmp_path / "target").write_text("x")
        (tmp_path / "target").chmod(0o600)
        (tmp_path / "out").symlink_to(tmp_path / "target")
        with pytest.raises(UnsafeFile, match="symbolic link"):
            open_private(tmp_path / "out", os.O_WRONLY)
