"""Tamper evidence: a sequence number and an HMAC chain over every audit record.

Record ``n`` carries ``seq`` = n and ``chain`` = HMAC-SHA256(chain key, chain of record n-1,
a newline, the record's line up to the chain). The chain key is derived from the audit key
(HMAC(audit key, ``rotator-audit-chain-v1``)), so anyone who can compute fingerprints can
verify, and no one without the key can forge a record that verifies. Every writer (the CLI,
the daemon) appends under an exclusive lock on the log and continues from its last record, or
from the checkpoint when the log was rotated away, so there is one chain across processes and
files. The checkpoint (``seq`` and ``chain`` of the last record written) lives in a file of its
own beside the log; it reveals a truncated tail, which the chain alone cannot.

A JSON record is sealed by appending ``,"seq":N,"chain":"<hex>"`` to its last object
(``rotator``); a CEF record by appending `` rotatorSeq=N rotatorChain=<hex>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
_CHAIN_LABEL = b"rotator-audit-chain-v1"
_JSON_TAIL = re.compile(r',"seq":(\d+),"chain":"([0-9a-f]{64})"\}\}$')
_CEF_TAIL = re.compile(r" rotatorSeq=(\d+) rotatorChain=([0-9a-f]{64})$")


def chain_key(audit_key: bytes) -> bytes:
    return hmac.new(audit_key, _CHAIN_LABEL, hashlib.sha256).digest()


def link(key: bytes, previous: str, body: str) -> str:
    """The chain value of ``body`` (the record with its seq, without its chain)."""
    pads = _PADS.get(key)
    if pads is None:
        pads = _pads(key)
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(f"{previous}\n{body}".encode("utf-8", "surrogatepass"))
    outer.update(inner.digest())
    return outer.hexdigest()


#: HMAC-SHA256 (RFC 2104) with its key's two padded blocks hashed once per key: a record
#: then costs a copy of each state, not the key's setup (half the time of hmac.digest).
_PADS: dict[bytes, tuple[hashlib._Hash, hashlib._Hash]] = {}
_BLOCK = 64  # SHA-256's block size


def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    block = (hashlib.sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK, b"\0")
    pads = (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)))
    if len(_PADS) < 64:  # chain keys are few: one per audit key in the process
        _PADS[key] = pads
    return pads


def seal(line: str, seq: int, key: bytes, previous: str) -> tuple[str, str]:
    """``line`` with ``seq`` and its chain value appended; and that chain value."""
    if not line.startswith("CEF:"):  # JSON: the last object is rotator's (possibly empty)
        comma = "" if line.endswith("{}}") else ","
        body = f'{line[:-2]}{comma}"seq":{seq}}}}}'
        value = link(key, previous, body)
        return f'{body[:-2]},"chain":"{value}"}}}}', value
    body = f"{line} rotatorSeq={seq}"
    value = link(key, previous, body)
    return f"{body} rotatorChain={value}", value


def unseal(line: str) -> tuple[int, str, str] | None:
    """``(seq, chain, body)`` of a sealed line, or None when it carries no seal."""
    if line.startswith("CEF:"):
        match = _CEF_TAIL.search(line)
        if match:
            return int(match[1]), match[2], line[:match.start() + len(f" rotatorSeq={match[1]}")]
        return None
    match = _JSON_TAIL.search(line)
    if match:
        return int(match[1]), match[2], line[:match.start() + len(f',"seq":{match[1]}')] + "}}"
    return None


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    chain: str

    def dumps(self) -> str:
        return f'{{"seq": {self.seq}, "chain": "{self.chain}"}}'

    @staticmethod
    def load(path: Path) -> Checkpoint | None:
        try:
            data = json.loads(path.read_text())
            return Checkpoint(int(data["seq"]), str(data["chain"]))
        except FileNotFoundError:
            return None


def checkpoint_path(log: Path) -> Path:
    return log.with_name(log.name + ".checkpoint")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


@dataclass
class _Record:
    file: str
    line: int
    seq: int
    chain: str
    body: str


def verify(key: bytes, files: Iterable[Path], checkpoint: Checkpoint | None = None,
           kept: Sequence[Checkpoint] = ()) -> tuple[Problem | None, int]:
    """The first problem in ``files`` (oldest first, one chain across them) and how many
    records verified before it. The first record anchors the chain when the files do not
    start at seq 1 (older files were removed).

    ``checkpoint`` is the one beside the log; ``kept`` are those kept apart from it (in the
    journal, ascending ``seq``): the log must reach each one and match it where it has it.
    """
    records: list[_Record] = []
    for path in files:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="\n") as handle:
            for number, raw in enumerate(handle, 1):
                text = raw.rstrip("\n")
                if not text:
                    continue
                sealed = unseal(text)
                if sealed is None:
                    return Problem(str(path), number, "not a sealed audit record "
                                   "(no seq and chain): inserted or edited"), len(records)
                records.append(_Record(str(path), number, *sealed))
    previous, expected = GENESIS, 1
    for index, record in enumerate(records):
        if index == 0 and record.seq != 1:
            previous, expected = record.chain, record.seq + 1  # anchored on the first
            continue
        following = records[index + 1] if index + 1 < len(records) else None
        problem = _check(key, record, following, previous, expected)
        if problem:
            return Problem(record.file, record.line, problem), index
        previous, expected = record.chain, record.seq + 1
    last_seq = expected - 1
    if checkpoint is not None:
        found = _against(records, last_seq, [checkpoint], "the checkpoint")
        if found:
            return found, len(records)
    if kept:
        found = _against(records, last_seq, kept, "the journal's checkpoint")
        if found:
            return found, len(records)
    return None, len(records)


def _against(records: list[_Record], last_seq: int, checkpoints: Sequence[Checkpoint],
             source: str) -> Problem | None:
    """The first checkpoint the records differ from, oldest first; then a truncated tail."""
    by_seq = {r.seq: r for r in records} if len(checkpoints) > 1 else {}
    for checkpoint in checkpoints:
        at = by_seq.get(checkpoint.seq) if by_seq else \
            next((r for r in records if r.seq == checkpoint.seq), None)
        if at is not None and at.chain != checkpoint.chain:
            return Problem(at.file, at.line, f"seq {at.seq} does not match {source}'s "
                           "chain value: the log was rewritten")
    highest = max(checkpoints, key=lambda c: c.seq)
    if highest.seq > last_seq:
        where = records[-1] if records else None
        return Problem(where.file if where else "-", where.line if where else 0,
                       f"tail truncated: the log ends at seq {last_seq} but {source} "
                       f"records seq {highest.seq}")
    return None


def _check(key: bytes, record: _Record, following: _Record | None, previous: str,
           expected: int) -> str | None:
    links = link(key, previous, record.body) == record.chain
    if record.seq == expected and links:
        return None
    if record.seq == expected + 1 and following is not None and following.seq == expected:
        return f"records reordered: seq {record.seq} comes before seq {expected}"
    if following is not None and following.seq == expected \
            and link(key, previous, following.body) == following.chain:
        return f"record inserted: seq {record.seq} does not belong in the chain"
    if record.seq == expected:
        return f"record edited: seq {record.seq} does not match its chain value"
    if record.seq > expected:
        missing = record.seq - expected
        return (f"{missing} record(s) deleted before this one: seq {expected}"
                + (f" to {record.seq - 1}" if missing > 1 else "") + " missing")
    return f"record out of order or repeated: seq {record.seq} where {expected} was expected"
