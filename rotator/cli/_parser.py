"""The ``rotator`` command line's grammar: its parser, exit codes and usage error."""

from __future__ import annotations

import argparse
import sys
from contextvars import ContextVar
from typing import Any, TextIO

from rotator import __version__
from rotator.interfaces import Stage

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: A closed output pipe: the code of a process killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141
#: How long ``rotate`` waits, by default, for another process rotating the same client.
DEFAULT_LOCK_WAIT = 300.0
#: Renderers for the operational log on stderr (``--log-format``); not the audit log.
LOG_FORMATS = ("console", "json")


#: Where ``--help`` goes: the ``out`` stream given to :func:`run`.
HELP_OUT: ContextVar[TextIO] = ContextVar("rotator_help_out", default=sys.stdout)


class UsageError(Exception):
    """The command line itself is wrong (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 itself; keep control here
        raise UsageError(f"{self.prog}: {message}")

    def print_help(self, file: Any = None) -> None:
        super().print_help(file or HELP_OUT.get())


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        HELP_OUT.get().write(f"rotator {__version__}\n")
        raise SystemExit(0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", default="config/rotator.toml",
                        help="configuration file (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="debug log on stderr (tracebacks included)")
    common.add_argument("--log-format", choices=LOG_FORMATS, default="console",
                        help="how log lines on stderr look: console (key=value, for people) "
                             "or json (one object a line, for a log shipper); both start with "
                             "an ISO 8601 UTC timestamp (default: %(default)s)")

    parser = _Parser(prog="rotator", description="Rotate OAuth 2.0 client secrets, verified "
                                                 "and audited.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print rotator's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True,
                                       parser_class=_Parser)
    config_sub.add_parser("check", parents=[common], help="report every configuration problem")

    def clients_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("clients", nargs="*", metavar="CLIENT", help="client names")
        p.add_argument("--all", action="store_true", help="every configured client")
        return p

    rotate = clients_cmd("rotate", "rotate client secrets now")
    rotate.add_argument("--dry-run", action="store_true", help="say what would happen")
    rotate.add_argument("--abandon-pending", action="store_true",
                        help="discard a pending secret that another rotation left behind")
    rotate.add_argument("--wait", type=_seconds, default=DEFAULT_LOCK_WAIT, metavar="SECONDS",
                        help="how long to wait while another process rotates the same client "
                             "(default: %(default)g)")
    rotate.add_argument("--force", action="store_true",
                        help="rotate even if another process rotated the client after this "
                             "command was given")
    rotate.add_argument("--due", action="store_true",
                        help="only the clients that are due, by the daemon's rule")
    rotate.add_argument("--parallel", type=_positive, default=1, metavar="N",
                        help="rotate up to N clients at once, at most [daemon] "
                             "idp_concurrency of them against one IdP (default: %(default)s)")
    verify = clients_cmd("verify", "check that the stored secret obtains a token")
    verify.add_argument("--stage", choices=[s.value for s in Stage], default="current",
                        help="which stored secret to try (default: %(default)s)")
    retire = clients_cmd("retire", "retire old secrets whose grace period has passed")
    retire.add_argument("--now", action="store_true", help="end the grace period now")
    status = clients_cmd("status", "show each client's rotation state (default: every client)")
    status.set_defaults(all_by_default=True)
    sub.add_parser("run", parents=[common], help="run the daemon: rotate and retire on schedule")

    audit = sub.add_parser("audit", help="audit log commands")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    check = audit_sub.add_parser(
        "verify", parents=[common],
        help="check the audit log's sequence and HMAC chain; exit 1 at the first bad record")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="the log's files, oldest first (rotated ones, then the live one)")
    check.add_argument("--checkpoint", metavar="FILE",
                       help="checkpoint to detect a truncated tail (default: the configured "
                            "audit file's, when that file is given)")
    check.add_argument("--journal", action="store_true",
                       help="also check the log against the checkpoints the configured "
                            "journal keeps of it (see docs/audit.md)")
    audit_sub.add_parser(
        "fingerprint", parents=[common],
        help="read a secret from stdin (no echo) and print the fingerprint the audit log "
             "would show for it")
    journal = sub.add_parser("journal", help="rotation journal commands")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True,
                                         parser_class=_Parser)
    migrate = journal_sub.add_parser(
        "migrate", parents=[common],
        help="copy the SQLite journal's history into an empty PostgreSQL journal")
    target = migrate.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-env", metavar="VAR",
                        help="environment variable holding the PostgreSQL URL (keeps its "
                             "password off the command line)")
    target.add_argument("--to", metavar="URL", help="the PostgreSQL URL")
    return parser
