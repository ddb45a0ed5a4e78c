"""The syslog transport: RFC 5424 messages over UDP, TCP (RFC 6587) or TLS (RFC 5425).

Each audit record is one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [rotator@32473 event="…" seq="…" chain="…"] MSG

PRI is facility * 8 + severity (info 6, warning 4, error 3); TIMESTAMP the event's time;
MSGID the event name (at most 32 printable ASCII characters); the structured data element
carries the event, the record's ``seq`` and ``chain`` (its id: a re-sent record has the same
one), and the client and rotation id when the record has them, each value escaped as RFC 5424
says (``"``, ``\\`` and ``]`` get a backslash); MSG is the sealed record itself in the sink's
format, UTF-8. Over TCP and TLS each message is framed by octet counting (``LEN SP MSG``,
RFC 6587 §3.4.1); over UDP each is one datagram.

TLS verifies the collector's certificate against ``ca_file`` (or the system's CAs) and its
name; a client certificate is presented when ``cert_file``/``key_file`` are set. Syslog has
no acknowledgement: a message is delivered once the collector's socket took it, so a
collector that dies with messages in its buffers loses them (and UDP may lose any).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from rotator.audit.remote import describe
from rotator.audit.spool import DeliveryError, Record

FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
              **{f"local{n}": 16 + n for n in range(8)}}
_SEVERITY = {"error": 3, "warning": 4, "info": 6}
DEFAULT_SD_ID = "rotator@32473"  # 32473: the enterprise number RFC 5612 reserves for examples
MAX_UDP = 65000


def sd_escape(value: object) -> str:
    """An RFC 5424 PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped with a backslash."""
    return (str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]"))


def _header_token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` long, or ``-``."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def format_message(record: Record, *, facility: int = FACILITIES["authpriv"],
                   hostname: str = "-", app_name: str = "rotator", procid: str = "-",
                   sd_id: str = DEFAULT_SD_ID) -> bytes:
    """The RFC 5424 message of one sealed record."""
    info = describe(record.line)
    pri = facility * 8 + _SEVERITY.get(info.severity, 6)
    stamp = info.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    params = [("event", info.name), ("seq", record.seq), ("chain", record.chain)]
    params += [(k, info.fields[k]) for k in ("client", "rotation_id")
               if info.fields.get(k) is not None]
    sd = "[" + sd_id + "".join(f' {k}="{sd_escape(v)}"' for k, v in params) + "]"
    head = " ".join([f"<{pri}>1", stamp, _header_token(hostname, 255),
                     _header_token(app_name, 48), _header_token(procid, 128),
                     _header_token(info.name, 32), sd])
    return f"{head} {record.line}".encode("utf-8", "surrogatepass")


class SyslogTransport:
    """Sends records to one syslog collector; one connection kept open for TCP and TLS."""

    def __init__(self, host: str, port: int, protocol: str = "tls", *,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, server_name: str | None = None,
                 facility: str = "authpriv", hostname: str | None = None,
                 app_name: str = "rotator", sd_id: str = DEFAULT_SD_ID,
                 timeout: float = 10.0) -> None:
        self.host, self.port, self.protocol = host, port, protocol
        self._timeout = timeout
        self._server_name = server_name or host
        self._facility = FACILITIES[facility]
        self._hostname = hostname or socket.gethostname()
        self._app_name, self._sd_id = app_name, sd_id
        self._context: ssl.SSLContext | None = None
        if protocol == "tls":
            self._context = ssl.create_default_context(cafile=ca_file)
            self._context.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file and key_file:
                self._context.load_cert_chain(cert_file, key_file)
        self._sock: socket.socket | None = None

    @classmethod
    def from_settings(cls, s: Mapping[str, Any]) -> SyslogTransport:
        host, port = split_address(s["address"])
        return cls(host, port, s.get("transport") or "tls", ca_file=s.get("ca_file"),
                   cert_file=s.get("cert_file"), key_file=s.get("key_file"),
                   server_name=s.get("server_name"), facility=s.get("facility") or "authpriv",
                   hostname=s.get("hostname"), app_name=s.get("app_name") or "rotator",
                   sd_id=s.get("sd_id") or DEFAULT_SD_ID, timeout=s.get("timeout") or 10.0)

    def message(self, record: Record) -> bytes:
        return format_message(record, facility=self._facility, hostname=self._hostname,
                              app_name=self._app_name, procid=str(os.getpid()),
                              sd_id=self._sd_id)

    def send(self, records: Sequence[Record]) -> None:
        messages = [self.message(r) for r in records]
        try:
            if self.protocol == "udp":
                self._send_udp(messages)
                return
            framed = b"".join(b"%d %s" % (len(m), m) for m in messages)
            self._connect().sendall(framed)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise DeliveryError(f"syslog {self.protocol} {self.host}:{self.port}: "
                                f"{exc.strerror or exc}" if isinstance(exc, OSError)
                                else str(exc)) from None

    def _send_udp(self, messages: list[bytes]) -> None:
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.connect((self.host, self.port))
        for message in messages:
            self._sock.send(message[:MAX_UDP])

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        if self._context is not None:
            try:
                sock = self._context.wrap_socket(sock, server_hostname=self._server_name)
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        return sock

    def close(self) -> None:
        """Close the connection; over TLS with a close_notify first (RFC 5425 §4.4), since a
        collector may discard what it read from a connection that ended without one."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if isinstance(sock, ssl.SSLSocket):
                with contextlib.suppress(OSError, ValueError):
                    sock = sock.unwrap()
        finally:
            sock.close()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)
