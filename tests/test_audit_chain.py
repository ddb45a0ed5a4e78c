"""Tamper evidence: every record is sealed with a sequence number and an HMAC chain, and
``rotator audit verify`` names the first bad record and what is wrong with it."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import multiprocessing
import os
import sys
import threading
from pathlib import Path

import pytest
from test_cli import AUDIT_VAR, Setup, setup  # noqa: F401 - the fixture

from rotator.audit import AuditLog
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path, link, verify
from rotator.secrets import Secret

KEY = "k" * 32


def _write(file: Path, count: int, key: str = KEY, start: int = 0) -> None:
    log = AuditLog(Secret(key), file=file)
    for i in range(start, start + count):
        log.event("rotation_step", step=f"s{i}", outcome="success")
    log.close()


def _verify(*files: Path, checkpoint: bool = True) -> tuple[str | None, int]:
    cp = Checkpoint.load(checkpoint_path(files[-1])) if checkpoint else None
    problem, count = verify(chain_key(KEY.encode()), files, cp)
    return (problem.what if problem else None), count


def _lines(file: Path) -> list[str]:
    return file.read_text().splitlines(keepends=True)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    file = tmp_path / "audit.jsonl"
    _write(file, 10)
    return file


class TestTamperingIsDetected:
    """An edited, deleted, inserted or reordered record, or a truncated tail, is reported
    at the first bad record; an untouched log verifies."""

    def test_untouched_log_verifies(self, log: Path) -> None:
        assert _verify(log) == (None, 10)

    def test_edited_record(self, log: Path) -> None:
        lines = _lines(log)
        lines[4] = lines[4].replace('"step":"s4"', '"step":"s9"')
        log.write_text("".join(lines))
        what, count = _verify(log)
        assert what is not None and "edited" in what and "seq 5" in what and count == 4

    def test_deleted_record(self, log: Path) -> None:
        lines = _lines(log)
        del lines[3]
        log.write_text("".join(lines))
        what, _ = _verify(log)
        assert what is not None and "deleted" in what and "seq 4 missing" in what

    def test_inserted_record(self, log: Path, tmp_path: Path) -> None:
        other = tmp_path / "other.jsonl"
        _write(other, 6, key="x" * 32)  # sealed, but with another key
        lines = _lines(log)
        lines.insert(5, _lines(other)[5])
        log.write_text("".join(lines))
        what, count = _verify(log)
        assert what is not None and "inserted" in what and count == 5

    def test_unsealed_line_inserted(self, log: Path) -> None:
        lines = _lines(log)
        lines.insert(2, json.dumps({"event": {"action": "rotation_started"}}) + "\n")
        log.write_text("".join(lines))
        what, _ = _verify(log)
        assert what is not None and "not a sealed audit record" in what

    def test_reordered_records(self, log: Path) -> None:
        lines = _lines(log)
        lines[6], lines[7] = lines[7], lines[6]
        log.write_text("".join(lines))
        what, count = _verify(log)
        assert what is not None and "reordered" in what and count == 6

    def test_truncated_tail(self, log: Path) -> None:
        log.write_text("".join(_lines(log)[:7]))
        what, _ = _verify(log)
        assert what is not None and "tail truncated" in what and "seq 10" in what
        assert _verify(log, checkpoint=False) == (None, 7)  # the chain alone cannot tell


class TestOneChain:
    """Rotated files, a restarted writer and concurrent writers keep one chain."""

    def test_rotation_across_files(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        for i in range(3):
            log.event("rotation_step", step=f"a{i}", outcome="success")
        file.rename(tmp_path / "audit.jsonl.1")  # logrotate moves the file away
        for i in range(3):
            log.event("rotation_step", step=f"b{i}", outcome="success")
        log.close()
        _write(file, 2)  # a new process after rotation continues the chain
        assert _verify(tmp_path / "audit.jsonl.1", file) == (None, 8)
        what, _ = _verify(file)  # the live file alone starts at seq 4: anchored, verifies
        assert what is None
        (tmp_path / "audit.jsonl.1").write_text("".join(_lines(tmp_path / "audit.jsonl.1")[:2]))
        what, _ = _verify(tmp_path / "audit.jsonl.1", file)
        assert what is not None and "deleted" in what

    def test_reopen_after_a_move(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        log = AuditLog(Secret(KEY), file=file)
        log.event("rotation_step", step="a")
        file.rename(tmp_path / "audit.jsonl.1")
        file.touch(mode=0o600)  # logrotate's create: an empty file in its place
        log.reopen()  # SIGHUP
        log.event("rotation_step", step="b")
        log.close()
        assert len(_lines(file)) == 1
        assert _verify(tmp_path / "audit.jsonl.1", file) == (None, 2)

    def test_threads_and_processes_writing_at_once(self, tmp_path: Path) -> None:
        file = tmp_path / "audit.jsonl"
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_write, args=(file, 50)) for _ in range(2)]
        for p in procs:
            p.start()
        log = AuditLog(Secret(KEY), file=file)
        threads = [threading.Thread(target=lambda: [log.event("rotation_step", step="t")
                                                    for _ in range(25)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.close()
        for p in procs:
            p.join()
            assert p.exitcode == 0
        assert _verify(file) == (None, 200)

    def test_concurrent_events_share_an_fsync(self, tmp_path: Path) -> None:
        log = AuditLog(Secret(KEY), file=tmp_path / "audit.jsonl")
        barrier = threading.Barrier(8)

        def writer() -> None:
            barrier.wait()
            for _ in range(50):
                log.event("rotation_step", step="t")

        threads = [threading.Thread(target=writer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = log._sinks[0].batches  # type: ignore[union-attr]
        log.close()
        assert batches < 400
        assert _verify(tmp_path / "audit.jsonl") == (None, 400)


class TestVerifyCommand:
    """rotator audit verify exits 0 on an intact log and 1 naming the first bad record."""

    def test_intact_then_edited(self, setup: Setup) -> None:  # noqa: F811
        setup.write()
        file = setup.dir / "audit.jsonl"
        log = AuditLog(Secret(os.environ[AUDIT_VAR]), file=file)
        for i in range(3):
            log.event("rotation_step", step=f"s{i}", outcome="success")
        log.close()
        code, out, _ = setup.cli("audit", "verify", str(file))
        assert code == 0 and out.startswith("ok: 3 record(s)")
        file.write_text(file.read_text().replace('"s1"', '"s7"'))
        code, out, _ = setup.cli("audit", "verify", str(file))
        assert code == 1 and f"{file}:2: record edited" in out

    def test_fingerprint_reads_stdin(self, setup: Setup,  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        setup.write()
        monkeypatch.setattr(sys, "stdin", io.StringIO(setup.secret + "\n"))
        code, out, _ = setup.cli("audit", "fingerprint")
        expected = AuditLog(Secret(os.environ[AUDIT_VAR])).fingerprint(Secret(setup.secret))
        assert code == 0 and out.strip() == expected


class TestFormatSetting:
    """[audit] format picks json, ocsf or cef; anything else is a config error naming it."""

    def test_unknown_format_is_refused(self, setup: Setup) -> None:  # noqa: F811
        setup.write(audit='file = "audit.jsonl"\nformat = "xml"')
        code, _, err = setup.cli("config", "check")
        assert code == 2 and "audit.format" in err and "json, ocsf, cef" in err

    def test_cef_is_written_and_verifies(self, setup: Setup) -> None:  # noqa: F811
        setup.write(audit='file = "audit.jsonl"\nformat = "cef"')
        code, _, _ = setup.cli("verify", "app")
        assert code == 1  # the IdP is unreachable; the attempt is audited all the same
        text = (setup.dir / "audit.jsonl").read_text()
        assert text.startswith("CEF:0|rotator|rotator|")
        code, out, _ = setup.cli("audit", "verify", str(setup.dir / "audit.jsonl"))
        assert code == 0 and out.startswith("ok: 1 record(s)")


class TestNoRotationWithoutItsRecord:
    """When the audit record cannot be made durable, the event raises and the rotation goes
    no further: the IdP issues nothing and the stores are unchanged."""

    def test_disk_full(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from test_engine import CAPS, make_rig

        from rotator.audit import sinks

        def full(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        with make_rig(tmp_path, CAPS["generated-many"]) as rig:
            before, active = rig.env(), dict(rig.idp.active)
            monkeypatch.setattr(sinks.os, "write", full)
            outcome = rig.engine.rotate("app")  # the engine turns the error into a failure
            assert not outcome.ok and "No space left" in outcome.message
            assert rig.env() == before and rig.idp.active == active
            monkeypatch.undo()
            assert rig.engine.rotate("app").ok  # the next run, with a disk, goes on


class TestSeveralSinks:
    """[[audit.sinks]] adds files, each in its format with its own chain; a bad entry is a
    config error naming audit.sinks[i] and its key."""

    def test_json_file_and_cef_sink(self, setup: Setup) -> None:  # noqa: F811
        setup.write(audit='file = "audit.jsonl"\n'
                          '[[audit.sinks]]\ntype = "file"\npath = "siem/audit.cef"\n'
                          'format = "cef"\n')
        assert setup.cli("verify", "app")[0] == 1
        assert setup.cli("verify", "other")[0] == 1
        cef = setup.dir / "siem" / "audit.cef"
        assert all(line.startswith("CEF:0|") for line in cef.read_text().splitlines())
        assert (setup.dir / "audit.jsonl").read_text().startswith("{")
        for file in (setup.dir / "audit.jsonl", cef):
            code, out, _ = setup.cli("audit", "verify", str(file))
            assert code == 0 and out.startswith("ok: 2 record(s)")

    def test_bad_entries_are_reported_together(self, setup: Setup) -> None:  # noqa: F811
        setup.write(audit='file = "audit.jsonl"\n'
                          '[[audit.sinks]]\ntype = "kafka"\npath = "a.log"\n'
                          '[[audit.sinks]]\ntype = "file"\n'
                          '[[audit.sinks]]\ntype = "file"\npath = "b.log"\nformat = "xml"\n')
        code, _, err = setup.cli("config", "check")
        assert code == 2
        for key in ("audit.sinks[0].type", "audit.sinks[1].path", "audit.sinks[2].format"):
            assert key in err


class TestChainValueIsHmacSha256:
    """A record's chain value is HMAC-SHA256 (RFC 2104) of the previous chain value, a
    newline and the record, as documented, for any key length, so other tools can check it."""

    @pytest.mark.parametrize("key", [b"", b"k" * 32, b"x" * 64, b"y" * 65, b"z" * 200])
    def test_same_as_the_standard_library(self, key: bytes) -> None:
        for body in ('{"rotator":{"seq":1}}', "CEF:0|caf\u00e9 \udc80 rotatorSeq=2"):
            data = ("0" * 64 + "\n" + body).encode("utf-8", "surrogatepass")
            assert link(key, "0" * 64, body) == hmac.new(key, data, hashlib.sha256).hexdigest()
