"""``rotator audit verify`` and ``rotator audit fingerprint``."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from pathlib import Path
from typing import TextIO

from rotator.audit import AuditLog
from rotator.audit.chain import Checkpoint, chain_key, checkpoint_path
from rotator.audit.chain import verify as verify_chain
from rotator.audit.checkpoints import key_id as checkpoint_key_id
from rotator.audit.checkpoints import log_id
from rotator.cli._engine import open_journal_of
from rotator.cli._parser import EXIT_FAILED, EXIT_OK, UsageError
from rotator.config import Config
from rotator.secrets import Secret


def audit_command(args: argparse.Namespace, config: Config, out: TextIO, err: TextIO) -> int:
    key = config.audit.require_key(config.path)
    if args.audit_command == "fingerprint":
        if sys.stdin.isatty():
            value = getpass.getpass("secret (not echoed): ", stream=err)
        else:
            value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise UsageError("no secret on stdin")
        log = AuditLog(key)
        print_ = json.dumps({"fingerprint": log.fingerprint(Secret(value))}) if args.json \
            else log.fingerprint(Secret(value))
        out.write(print_ + "\n")
        return EXIT_OK
    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"not a file: {', '.join(missing)}")
    checkpoint_file = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint_file is None and config.audit.file is not None \
            and config.audit.file.resolve() in [f.resolve() for f in files]:
        checkpoint_file = checkpoint_path(config.audit.file)
    checkpoint = Checkpoint.load(checkpoint_file) if checkpoint_file else None
    kept = _journal_checkpoints(config, key, files) if args.journal else []
    problem, count = verify_chain(chain_key(key.reveal().encode()), files, checkpoint, kept)
    if args.json:
        out.write(json.dumps({"ok": problem is None, "records": count, "problem": None
                              if problem is None else dataclasses.asdict(problem),
                              **({"journal_checkpoints": len(kept)} if args.journal else {})})
                  + "\n")
    elif problem is None:
        out.write(f"ok: {count} record(s) verified"
                  + (f", up to the checkpoint's seq {checkpoint.seq}" if checkpoint else "")
                  + (f", and the journal's seq {kept[-1].seq}" if kept else "")
                  + ("; the journal keeps no checkpoint of this log" if args.journal
                     and not kept else "")
                  + "\n")
    else:
        out.write(f"TAMPERED {problem} ({count} record(s) verified before it)\n")
    return EXIT_OK if problem is None else EXIT_FAILED


def _journal_checkpoints(config: Config, key: Secret, files: list[Path]) -> list[Checkpoint]:
    """The checkpoints the configured journal keeps of the log ``files`` make up: the
    configured file log among them (``[audit] file`` or a file sink), else the newest file."""
    configured = [config.audit.file] if config.audit.file is not None else []
    configured += [s.path for s in config.audit.sinks if s.type == "file"]
    given = {f.resolve() for f in files}
    live = next((p for p in configured if p.resolve() in given), files[-1])
    journal = open_journal_of(config)
    try:
        kept = journal.audit_checkpoints(log_id(live), checkpoint_key_id(key.reveal().encode()))
    finally:
        journal.close()
    return [Checkpoint(c.seq, c.chain) for c in kept]
