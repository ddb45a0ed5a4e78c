"""The remote audit sinks: syslog to a real rsyslog, HTTP to a HEC-like collector, the spool."""

from __future__ import annotations

import json
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
import uvicorn
from config_env import MINIMAL_CONFIG
from server_rsyslog import Rsyslog, free_port, make_ca

from rotator.audit import AuditLog, bound
from rotator.audit import spool as spool_module
from rotator.audit.chain import chain_key, unseal, verify
from rotator.audit.http import HttpTransport
from rotator.audit.remote import describe
from rotator.audit.spool import Record, SpoolPolicy, SpoolSink
from rotator.audit.syslog import SyslogTransport, format_message, sd_escape
from rotator.config import load_config
from rotator.errors import ConfigError
from rotator.secrets import Secret

KEY = Secret(secrets.token_urlsafe(32))
CHAIN = chain_key(KEY.reveal().encode())
FAST = SpoolPolicy(retry_min=0.02, retry_max=0.2, drain=2.0)
FORMATS = ("json", "ocsf", "cef")


def _poll(check: Any, attempts: int = 400) -> Any:
    """Call ``check`` until it returns something true; bounded by count, not by a clock."""
    for _ in range(attempts):
        result = check()
        if result:
            return result
        time.sleep(0.05)
    return check()


def _events(log: AuditLog, count: int, start: int = 0, **extra: Any) -> None:
    for n in range(start, start + count):
        with bound(client="app", rotation_id=f"r-{n}", actor="test"):
            log.event("secret_staged", step="stage", outcome="success", store="bao",
                      duration_ms=n, **extra)


def _seq_of(line: str) -> int:
    sealed = unseal(line)
    assert sealed is not None, line
    return sealed[0]


# -- syslog -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog")).start()
    try:
        yield server
    finally:
        server.stop()


class _Recording(SyslogTransport):
    """A syslog transport that also keeps every message it sent."""

    sent: list[bytes]

    def message(self, record: Record) -> bytes:
        data = super().message(record)
        self.sent.append(data)
        return data


def _syslog(rsyslog: Rsyslog, protocol: str, *, client_cert: bool = False) -> _Recording:
    port = rsyslog.ports["mtls" if client_cert else protocol]
    cert, key = rsyslog.ca.pair("client")
    transport = _Recording("127.0.0.1", port, "tls" if protocol in ("tls", "mtls") else protocol,
                           ca_file=str(rsyslog.ca.ca),
                           cert_file=str(cert) if client_cert else None,
                           key_file=str(key) if client_cert else None, hostname="rotator-test")
    transport.sent = []
    return transport


_RFC5424 = re.compile(r"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[(?:[^\]\\]|\\.)*\]) (.*)$")
_SD_PARAM = re.compile(r' ([^= \]"]+)="((?:[^"\\]|\\.)*)"')


def _parse(raw: str) -> dict[str, Any]:
    match = _RFC5424.match(raw)
    assert match, raw
    sd = match[7]
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _SD_PARAM.findall(sd)}
    return {"pri": int(match[1]), "timestamp": match[2], "host": match[3], "app": match[4],
            "procid": match[5], "msgid": match[6], "sd_id": sd[1:].split(" ")[0],
            "params": params, "msg": match[8]}


def _deliver(log: AuditLog, sink: SpoolSink, count: int) -> None:
    _events(log, count)
    assert _poll(lambda: sink.delivered >= count), (sink.delivered, sink.failures)


class TestSyslogToRsyslog:
    """Every record reaches a real rsyslog as the RFC 5424 message rotator sent, over UDP,
    TCP with octet counting, TLS, and TLS with a client certificate."""

    @pytest.mark.parametrize("protocol", ["udp", "tcp", "tls", "mtls"])
    def test_transport(self, protocol: str, rsyslog: Rsyslog, tmp_path: Path) -> None:
        transport = _syslog(rsyslog, protocol, client_cert=protocol == "mtls")
        before = len(rsyslog.received())
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        sink = SpoolSink(f"syslog-{protocol}", tmp_path / "spool", CHAIN, transport, FAST)
        log.add_sink("json", sink)
        try:
            _deliver(log, sink, 12)
        finally:
            log.close()
        got = rsyslog.wait_for(before + 12)[before:]
        assert {name for name, _ in got} == {protocol}
        sent = [m.decode() for m in transport.sent]
        received = [raw for _, raw in got]
        if protocol == "udp":  # datagrams: loopback keeps them, but order is not promised
            assert sorted(received) == sorted(sent)
        else:
            assert received == sent
        for raw in received:
            parsed = _parse(raw)
            record = json.loads(parsed["msg"])
            assert parsed["pri"] == 10 * 8 + 6  # authpriv.info
            assert parsed["msgid"] == "secret_staged" == record["event"]["action"]
            assert parsed["sd_id"] == "rotator@32473"
            assert parsed["params"]["seq"] == str(record["rotator"]["seq"])
            assert parsed["params"]["chain"] == record["rotator"]["chain"]
            assert parsed["params"]["client"] == "app"
            assert parsed["host"] == "rotator-test"
        messages = sorted((_parse(raw)["msg"] for raw in received), key=_seq_of)
        log_file = tmp_path / "received.jsonl"
        log_file.write_text("\n".join(messages) + "\n")
        assert verify(CHAIN, [log_file]) == (None, 12)  # the chain arrived intact

    @pytest.mark.parametrize("format_", FORMATS)
    def test_each_format_over_tls(self, format_: str, rsyslog: Rsyslog, tmp_path: Path
                                  ) -> None:
        transport = _syslog(rsyslog, "tls")
        before = len(rsyslog.received())
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        sink = SpoolSink(f"syslog-{format_}", tmp_path / "spool", CHAIN, transport, FAST)
        log.add_sink(format_, sink)
        try:
            with bound(client="app", rotation_id='odd "id" \\ with ] in it'):
                log.event("rotation_failed", step="verify", outcome="failure", error="boom")
            assert _poll(lambda: sink.delivered >= 1)
        finally:
            log.close()
        got = rsyslog.wait_for(before + 1)[before:]
        assert [raw for _, raw in got] == [m.decode() for m in transport.sent]
        parsed = _parse(got[0][1])
        assert parsed["pri"] == 10 * 8 + 3  # an error event: severity 3
        assert parsed["msgid"] == "rotation_failed"
        assert parsed["params"]["rotation_id"] == 'odd "id" \\ with ] in it'
        assert _seq_of(parsed["msg"]) == int(parsed["params"]["seq"])


class TestSyslogTlsVerifies:
    """Over TLS the collector's certificate is verified: one from a CA not trusted, or for
    another name, is refused and nothing is sent."""

    @pytest.mark.parametrize("trust", ["system CAs", "wrong name"])
    def test_refused(self, trust: str, rsyslog: Rsyslog, tmp_path: Path) -> None:
        before = len(rsyslog.received())
        transport = SyslogTransport(
            "127.0.0.1", rsyslog.ports["tls"], "tls",
            ca_file=None if trust == "system CAs" else str(rsyslog.ca.ca),
            server_name="siem.example.com" if trust == "wrong name" else None)
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        sink = SpoolSink("verify", tmp_path / "spool", CHAIN, transport, FAST)
        log.add_sink("json", sink)
        with structlog.testing.capture_logs() as logs:
            try:
                _events(log, 1)
                assert _poll(lambda: sink.failures >= 2)
            finally:
                log.close()
        assert sink.delivered == 0
        assert "CERTIFICATE_VERIFY_FAILED" in next(
            e["error"] for e in logs if e["event"] == "audit_delivery_failed")
        assert len(rsyslog.received()) == before


class TestSyslogMessage:
    """The RFC 5424 message: escaped structured data, a MSGID of at most 32 characters."""

    def test_sd_escaping(self) -> None:
        assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'

    def test_long_event_name_is_cut_to_32(self) -> None:
        line = ('{"@timestamp":"2026-01-01T00:00:00Z","event":{"action":"' + "x" * 40 +
                '"},"log":{"level":"info"},"rotator":{"seq":1,"chain":"' + "0" * 64 + '"}}')
        message = format_message(Record(1, "0" * 64, line)).decode()
        assert message.split(" ")[5] == "x" * 32


# -- HTTP -------------------------------------------------------------------------------------


class Collector:
    """An ASGI app that answers like Splunk HEC: it checks the token, keeps every event,
    and can be stopped and started again on the same port."""

    def __init__(self, token: str, port: int | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.token = token
        self.tls = tls
        self.port = port or free_port()
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.events: list[dict[str, Any]] = []
        #: answer 503 after keeping this many more batches (a lost answer)
        self.lose_answers = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.bodies.append(body)
        self.headers.append(headers)
        if scope["path"] != "/services/collector/event":
            return await self._answer(send, 404, {"text": "not found", "code": 404})
        if headers.get("authorization") != f"Splunk {self.token}":
            return await self._answer(send, 401, {"text": "Invalid token", "code": 4})
        decoder = json.JSONDecoder()
        text, pos, batch = body.decode(), 0, []
        while pos < len(text):
            event, pos = decoder.raw_decode(text, pos)
            batch.append(event)
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.events.extend(batch)
        if self.lose_answers:
            self.lose_answers -= 1
            return await self._answer(send, 503, {"text": "Server is busy", "code": 9})
        await self._answer(send, 200, {"text": "Success", "code": 0})

    @staticmethod
    async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/services/collector/event"

    def start(self) -> Collector:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off", access_log=False,
                                ssl_certfile=str(self.tls[0]) if self.tls else None,
                                ssl_keyfile=str(self.tls[1]) if self.tls else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        assert _poll(lambda: self._server is not None and self._server.started)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
        self._server = self._thread = None
        with socket.socket() as probe:  # the port is closed: a sender sees it refused
            assert probe.connect_ex(("127.0.0.1", self.port)) != 0

    def seqs(self) -> list[int]:
        return [int(e["fields"]["rotator_seq"]) for e in self.events]


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(secrets.token_urlsafe(24))
    try:
        yield server
    finally:
        server.stop()


def _hec(collector: Collector, token: str | None = None, fmt: str = "json") -> HttpTransport:
    return HttpTransport(collector.url, api="hec", token=Secret(token or collector.token),
                         sink="siem", format=fmt, index="audit")


def _http_log(tmp_path: Path, collector: Collector, fmt: str = "json",
              token: str | None = None) -> tuple[AuditLog, SpoolSink]:
    log = AuditLog(KEY, file=tmp_path / "audit.jsonl", format=fmt)
    sink = SpoolSink("siem", tmp_path / "spool", CHAIN, _hec(collector, token, fmt), FAST)
    log.add_sink(fmt, sink)
    return log, sink


def _once_each(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The at-least-once rule applied: the first copy of each id, in arrival order; every
    later copy must equal it."""
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        first = seen.setdefault(event["fields"]["rotator_id"], event)
        assert first == event
    return list(seen.values())


class TestHecOutage:
    """While the collector is down, events wait in the spool and no write blocks; when it is
    back every event arrives, in order, each id once unless an answer was lost."""

    def test_down_and_back(self, collector: Collector, tmp_path: Path) -> None:
        collector.start()
        log, sink = _http_log(tmp_path, collector)
        try:
            _events(log, 20)
            assert _poll(lambda: len(collector.events) >= 20)
            collector.stop()
            _events(log, 30, start=20)  # returns at once: nothing waits for the SIEM
            assert _poll(lambda: sink.failures >= 3)
            assert sink.delivered == 20 and sink.spool_bytes() > 0
            collector.start()
            assert _poll(lambda: len(collector.events) >= 50)
        finally:
            log.close()
        events = _once_each(collector.events)
        assert [e["fields"]["rotator_seq"] for e in events] == list(range(1, 51))
        assert [e["event"]["rotator"]["rotation_id"] for e in events] == \
            [f"r-{n}" for n in range(50)]
        event = events[0]
        assert event["index"] == "audit" and event["source"] == "rotator"
        assert event["sourcetype"] == "rotator:json" and event["event"]["ecs"]
        local = (tmp_path / "audit.jsonl").read_text().splitlines()
        assert len(local) == 50  # the local durable record has every event

    def test_a_lost_answer_resends_with_the_same_ids(self, collector: Collector,
                                                     tmp_path: Path) -> None:
        collector.lose_answers = 1
        collector.start()
        log, sink = _http_log(tmp_path, collector)
        try:
            _events(log, 5)
            assert _poll(lambda: sink.delivered >= 5)
        finally:
            log.close()
        assert len(collector.events) > 5  # the first batch came twice
        events = _once_each(collector.events)
        assert [e["fields"]["rotator_seq"] for e in events] == [1, 2, 3, 4, 5]

    def test_restart_mid_outage_delivers_the_spool_first(self, collector: Collector,
                                                         tmp_path: Path) -> None:
        log, sink = _http_log(tmp_path, collector)  # the collector is down
        _events(log, 10)
        assert _poll(lambda: sink.failures >= 2)
        log.close()  # drains for FAST.drain, then leaves the rest in the spool
        assert sink.delivered == 0 and collector.events == []
        spool = tmp_path / "spool" / "siem.jsonl"
        assert stat.S_IMODE(spool.stat().st_mode) == 0o600
        assert len(spool.read_text().splitlines()) == 10
        collector.start()
        log, sink = _http_log(tmp_path, collector)  # the process starts again
        try:
            _events(log, 5, start=10)
            assert _poll(lambda: len(collector.events) >= 15)
        finally:
            log.close()
        events = _once_each(collector.events)
        assert [e["fields"]["rotator_seq"] for e in events] == list(range(1, 16))
        assert [e["event"]["rotator"]["rotation_id"] for e in events] == \
            [f"r-{n}" for n in range(15)]


class TestSpoolCompaction:
    """The delivered head of the spool is cut while the rest waits, and delivery goes on in
    order across the new file."""

    def test_rewrite_keeps_order(self, collector: Collector, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(spool_module, "COMPACT_AT", 2000)
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        policy = SpoolPolicy(batch_size=3, retry_min=0.02, retry_max=0.1, drain=2.0)
        sink = SpoolSink("siem", tmp_path / "spool", CHAIN, _hec(collector), policy)
        log.add_sink("json", sink)
        try:
            _events(log, 30)  # the collector is down: all 30 wait
            collector.start()
            assert _poll(lambda: sink.delivered >= 30)
            _events(log, 5, start=30)  # written to the file the spool was rewritten into
            assert _poll(lambda: sink.delivered >= 35)
        finally:
            log.close()
        assert sink.rewrites >= 1
        events = _once_each(collector.events)
        assert [e["fields"]["rotator_seq"] for e in events] == list(range(1, 36))
        assert (tmp_path / "spool" / "siem.jsonl").stat().st_size < 2000 + 1000


class TestWebhook:
    """The generic webhook gets {"events": [...]} with each record's id, seq and document,
    and a bearer token when one is set."""

    def test_body(self, tmp_path: Path) -> None:
        transport = HttpTransport("https://hooks.test/audit", api="webhook", sink="hook",
                                  token=Secret("t" * 20))
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        _events(log, 2)
        log.close()
        lines = (tmp_path / "audit.jsonl").read_text().splitlines()
        records = [Record(_seq_of(x), unseal(x)[1], x) for x in lines]  # type: ignore[index]
        body = json.loads(transport.body(records))
        transport.close()
        assert [e["seq"] for e in body["events"]] == [1, 2]
        assert [e["id"] for e in body["events"]] == [r.chain for r in records]
        assert body["events"][0]["event"]["event"]["action"] == "secret_staged"


class TestBackoff:
    """During an outage new records do not cut the backoff short (no attempt per record), and
    closing neither waits out the backoff nor drains into a collector that is failing."""

    def test_one_attempt_per_backoff(self, collector: Collector, tmp_path: Path) -> None:
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        policy = SpoolPolicy(retry_min=3600.0, retry_max=3600.0, drain=3600.0)
        sink = SpoolSink("siem", tmp_path / "spool", CHAIN, _hec(collector), policy)
        log.add_sink("json", sink)
        try:
            _events(log, 1)
            assert _poll(lambda: sink.failures >= 1)
            _events(log, 20, start=1)
        finally:
            log.close()  # returns: the hour of backoff and of draining is not waited out
        assert sink.failures == 1 and sink.delivered == 0
        assert len((tmp_path / "spool" / "siem.jsonl").read_text().splitlines()) == 21


class TestSpoolStartedAgain:
    """A spool removed with its checkpoint (its records start again at seq 1) is delivered,
    not mistaken for records already sent."""

    def test_stale_cursor(self, collector: Collector, tmp_path: Path) -> None:
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir(mode=0o700)
        cursor = spool_dir / "siem.delivered"
        cursor.write_text("100\n")
        cursor.chmod(0o600)
        collector.start()
        log, sink = _http_log(tmp_path, collector)
        try:
            _events(log, 3)
            assert _poll(lambda: sink.delivered >= 3)
        finally:
            log.close()
        assert collector.seqs() == [1, 2, 3]


class TestHecTls:
    """HTTPS to the collector verifies its certificate against ca_file; without the CA that
    signed it nothing is delivered."""

    @pytest.mark.parametrize("trusted", [True, False])
    def test_https(self, trusted: bool, tmp_path: Path) -> None:
        ca = make_ca(tmp_path / "pki")
        server = Collector(secrets.token_urlsafe(24), tls=ca.pair("server")).start()
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        transport = HttpTransport(server.url, token=Secret(server.token),
                                  ca_file=str(ca.ca) if trusted else None)
        sink = SpoolSink("siem", tmp_path / "spool", CHAIN, transport, FAST)
        log.add_sink("json", sink)
        try:
            _events(log, 2)
            assert _poll(lambda: sink.delivered >= 2 if trusted else sink.failures >= 2)
        finally:
            log.close()
            server.stop()
        assert len(server.events) == (2 if trusted else 0)


class TestHecToken:
    """The token goes in the Authorization header only; a refused one is retried and logged
    without it."""

    def test_token_header_and_no_token_in_logs(self, collector: Collector,
                                               tmp_path: Path) -> None:
        collector.start()
        wrong = secrets.token_urlsafe(24)
        with structlog.testing.capture_logs() as logs:
            log, sink = _http_log(tmp_path, collector, token=wrong)
            try:
                _events(log, 1)
                assert _poll(lambda: sink.failures >= 2)
            finally:
                log.close()
        assert collector.headers[0]["authorization"] == f"Splunk {wrong}"
        failures = [e for e in logs if e["event"] == "audit_delivery_failed"]
        assert failures and "HTTP 401: Invalid token" in failures[0]["error"]
        assert wrong not in repr(logs)


class TestSpoolBound:
    """Nearing the spool's bound logs a warning; at the bound new records are counted as
    dropped for that sink (they stay in the local log) and nothing blocks."""

    def test_bound(self, collector: Collector, tmp_path: Path) -> None:
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        policy = SpoolPolicy(max_bytes=4000, retry_min=0.05, retry_max=0.1, drain=0.1)
        sink = SpoolSink("small", tmp_path / "spool", CHAIN, _hec(collector), policy)
        log.add_sink("json", sink)
        with structlog.testing.capture_logs() as logs:
            try:
                _events(log, 20)
            finally:
                log.close()
        names = [e["event"] for e in logs]
        assert names.count("audit_spool_nearing_bound") == 1
        assert names.count("audit_spool_full") == 1
        assert sink.dropped > 0
        assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 20

    def test_metrics(self, collector: Collector, tmp_path: Path) -> None:
        from rotator.daemon.metrics import Metrics

        log = AuditLog(KEY, file=tmp_path / "audit.jsonl")
        policy = SpoolPolicy(max_bytes=4000, retry_min=0.05, retry_max=0.1, drain=0.1)
        sink = SpoolSink("small", tmp_path / "spool", CHAIN, _hec(collector), policy)
        log.add_sink("json", sink)
        try:
            _events(log, 20)
            text = Metrics().render()[0].decode()
        finally:
            log.close()
        assert 'rotator_audit_spool_limit_bytes{sink="small"} 4000.0' in text
        assert f'rotator_audit_spool_dropped_total{{sink="small"}} {sink.dropped}.0' in text
        pending = re.search(r'rotator_audit_spool_bytes\{sink="small"\} (\S+)', text)
        assert pending and float(pending[1]) >= 4000 * 0.8


# -- configuration ----------------------------------------------------------------------------

_BASE = MINIMAL_CONFIG


def _config(tmp_path: Path, sinks: str, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "rotator.toml"
    path.write_text(_BASE + sinks)
    environ = {"AUDIT_KEY": KEY.reveal(), "KC": secrets.token_urlsafe(24), **(env or {})}
    return load_config(path, environ=environ)


class TestRemoteSinkConfig:
    """syslog and http sinks are checked like every table: each problem with file, key and
    reason, all at once; cleartext to a remote host only when allowed by name."""

    def test_every_problem_at_once(self, tmp_path: Path) -> None:
        sinks = """
[[audit.sinks]]
type = "syslog"
name = "s1"
address = "siem.example.com:514"
transport = "udp"
[[audit.sinks]]
type = "syslog"
name = "s1"
address = "nonsense"
cert_file = "client.pem"
[[audit.sinks]]
type = "http"
name = "h/1"
url = "http://splunk.example.com:8088/services/collector/event"
[[audit.sinks]]
type = "http"
name = "w"
api = "webhook"
url = "https://hooks.example.com/audit"
colour = "blue"
"""
        with pytest.raises(ConfigError) as caught:
            _config(tmp_path, sinks)
        found = {(p.key, p.file) for p in caught.value.problems}
        keys = {k for k, _ in found}
        assert {"audit.sinks[0].transport", "audit.sinks[1].name", "audit.sinks[1].address",
                "audit.sinks[1].key_file", "audit.sinks[1].cert_file",
                "audit.sinks[2].name", "audit.sinks[2].url", "audit.sinks[2].token_env",
                "audit.sinks[3].colour"} <= keys, keys
        assert all(f == str(tmp_path / "rotator.toml") for _, f in found)
        reasons = " ".join(p.reason for p in caught.value.problems)
        assert "allow_cleartext = true" in reasons and "allow_insecure_http" in reasons

    def test_a_remote_sink_needs_a_local_record(self, tmp_path: Path) -> None:
        path = tmp_path / "rotator.toml"
        path.write_text(_BASE.replace('file = "audit.jsonl"\n', "stdout = true\n", 1) + """
[[audit.sinks]]
type = "syslog"
name = "s1"
address = "127.0.0.1:6514"
""")
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={"AUDIT_KEY": KEY.reveal(), "KC": "k" * 20})
        assert [p.key for p in caught.value.problems] == ["audit.file"]

    def test_cleartext_allowed_by_name_and_token_from_env(self, tmp_path: Path) -> None:
        token = secrets.token_urlsafe(24)
        config = _config(tmp_path, """
[[audit.sinks]]
type = "syslog"
name = "s1"
address = "siem.example.com:514"
transport = "tcp"
allow_cleartext = true
[[audit.sinks]]
type = "http"
name = "splunk"
url = "https://splunk.example.com:8088/services/collector/event"
token_env = "HEC_TOKEN"
""", {"HEC_TOKEN": token})
        syslog_sink, http_sink = config.audit.sinks
        assert syslog_sink.path == tmp_path / "state" / "audit-spool" / "s1.jsonl"
        assert http_sink.settings["token"].reveal() == token
        assert token not in repr(config)

    def test_from_config_feeds_the_collector(self, collector: Collector, tmp_path: Path
                                             ) -> None:
        collector.start()
        tokfile = tmp_path / "hec.token"
        tokfile.write_text(collector.token)
        tokfile.chmod(0o600)
        config = _config(tmp_path, f"""
[[audit.sinks]]
type = "http"
name = "splunk"
format = "ocsf"
url = "{collector.url}"
token_file = "hec.token"
""")
        log = AuditLog.from_config(config)
        try:
            _events(log, 3)
            assert _poll(lambda: len(collector.events) >= 3)
        finally:
            log.close()
        assert [e["event"]["class_uid"] for e in collector.events] == [3004] * 3
        assert collector.events[0]["sourcetype"] == "rotator:ocsf"


# -- the leak scan ----------------------------------------------------------------------------


class TestNoSecretInRemoteSinks:
    """A live secret value that reaches an audit field is in no format of any sink: not in
    the spool, not in what the collector received, not in what rsyslog wrote."""

    @pytest.mark.parametrize("format_", FORMATS)
    def test_leak_scan(self, format_: str, collector: Collector, rsyslog: Rsyslog,
                       tmp_path: Path) -> None:
        value = secrets.token_urlsafe(24) + '="|\\]'
        secret = Secret(value)
        before = len(rsyslog.received())
        log = AuditLog(KEY, file=tmp_path / "audit.jsonl", format=format_)
        http = SpoolSink("siem", tmp_path / "spool", CHAIN, _hec(collector, fmt=format_),
                         FAST)
        syslog = SpoolSink("syslog", tmp_path / "spool", CHAIN, _syslog(rsyslog, "tls"), FAST)
        log.add_sink(format_, http)
        log.add_sink(format_, syslog)
        try:
            with bound(client="app", rotation_id=f"echo {value}"):
                log.event("rotation_failed", step="stage", outcome="failure",
                          error=f"IdP said: {json.dumps(value)} and {value}")
            spooled = (tmp_path / "spool" / "siem.jsonl").read_text()  # collector down
            assert _poll(lambda: syslog.delivered >= 1)
            collector.start()
            assert _poll(lambda: http.delivered >= 1)
        finally:
            log.close()
        core = value[:24]
        received = "\n".join(raw for _, raw in rsyslog.wait_for(before + 1)[before:])
        bodies = b"\n".join(collector.bodies).decode()
        for text in (spooled, received, bodies):
            assert text and "**********" in text
            assert core not in text
        assert secret
        assert describe(spooled.splitlines()[0]).name == "rotation_failed"
