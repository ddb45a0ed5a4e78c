"""Files that hold secrets or state: private directories, safe opens, atomic writes.

Threat model (``docs/security.md``): other local users on a shared host are not trusted. So a
file rotator writes or reads secrets from is opened without following symlinks, must belong
to this user and must not be open to the group or others; a directory rotator keeps state in
must belong to this user and must not be writable by others.

Every function raises :class:`UnsafeFile` (an ``OSError``) with a message that names the path
and says what to do, never a secret.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class UnsafeFile(OSError):
    """A file or directory is not safe to hold secrets or state; the message says why."""


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):o}"


def check_private_dir(path: Path) -> None:
    """Refuse a directory that another user owns or that the group or others may write.

    A sticky, world-writable directory such as ``/tmp`` is refused too: rotator's files
    would sit among everyone else's.
    """
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFile(f"{path} is a symbolic link; point the setting at the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeFile(f"{path} belongs to another user (uid {info.st_uid}); use a "
                         "directory of the user rotator runs as")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(f"{path} is writable by other users (mode {_mode(info)}); chmod 700 it")


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 if missing, then :func:`check_private_dir`.

    Each missing parent gets 0700 too (``mkdir(parents=True)`` would give it 0755): the
    audit spool, made first, must not leave the state directory readable by others.
    """
    missing = []
    for part in (path, *path.parents):
        if part.exists():
            break
        missing.append(part)
    for part in reversed(missing):
        part.mkdir(exist_ok=True, mode=0o700)
    check_private_dir(path)


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open ``path`` without following a symlink; refuse it unless this user owns it and
    neither group nor others have any access. Returns the descriptor (close-on-exec).

    ``flags`` are ``os.open`` flags (``O_CREAT`` creates the file with ``mode``).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise UnsafeFile(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise UnsafeFile(f"{path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise UnsafeFile(f"{path} is open to other users (mode {_mode(info)}); "
                             "chmod 600 it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_file(path: Path) -> bytes:
    """Read a whole file through :func:`open_private` (checked on the opened descriptor)."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_private_file(path: Path, data: bytes, *, tmp: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; the file is created with mode 0600.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path``
    and fsyncs the directory, so a crash leaves either the old or the new file, whole.
    ``tmp`` names the temporary file (a stale one is replaced; it is created exclusively and
    without following a symlink), so a writer that holds a lock can sweep what a killed
    predecessor left; without it a random name is used.
    """
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
