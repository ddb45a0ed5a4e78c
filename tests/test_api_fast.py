"""The admin API's fast read path and how its answers leave the server (api_fast, api_server)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_double import InMemoryRotationService, sample_clients

from rotator.config import ApiToken
from rotator.daemon.api import create_app, serve
from rotator.daemon.api_models import (
    Backoff,
    ClientOut,
    ConsumerOut,
    LastRotation,
    client_out,
    safe_json,
    safe_text,
)
from rotator.daemon.api_server import ApiServer, _OneWrite
from rotator.daemon.auth import Authenticator
from rotator.daemon.model import ClientState, ConsumerView
from rotator.secrets import Secret, redact

FINGERPRINT = "hmac-sha256:" + "cd34" * 8


class _Audit:
    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def event(self, name: str, **fields: Any) -> None:
        self.written.append({"event": name, **fields})


def _app(service: InMemoryRotationService, audit: _Audit | None = None
         ) -> tuple[TestClient, dict[str, str]]:
    token = secrets.token_urlsafe(24)
    digest = hashlib.sha256(token.encode()).digest()
    app = create_app(service, auth=Authenticator([ApiToken("viewer", "read", digest)]),
                     audit=audit)  # type: ignore[arg-type]
    return TestClient(app, client=("192.0.2.7", 4321)), {"Authorization": f"Bearer {token}"}


class _Recording:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class TestOneWritePerAnswer:
    """A response's head leaves with its body in one write; a head nothing follows leaves
    alone at the loop's next turn, and an interim 100 Continue is never held."""

    def _run(self, steps: Any) -> _Recording:
        recording = _Recording()

        async def main() -> None:
            transport = _OneWrite(recording, asyncio.get_running_loop())  # type: ignore[arg-type]
            await steps(transport, recording)

        asyncio.run(main())
        return recording

    def test_head_and_body_in_one_write(self) -> None:
        async def steps(transport: _OneWrite, recording: _Recording) -> None:
            transport.write(HEAD)
            transport.write(b"{}")
            await asyncio.sleep(0)
            transport.write(HEAD)
            transport.write(b"[]")

        assert self._run(steps).writes == [HEAD + b"{}", HEAD + b"[]"]

    def test_a_head_alone_leaves_at_the_next_turn(self) -> None:
        async def steps(transport: _OneWrite, recording: _Recording) -> None:
            transport.write(HEAD)
            assert recording.writes == []
            await asyncio.sleep(0)
            assert recording.writes == [HEAD]
            transport.write(b"{}")

        assert self._run(steps).writes == [HEAD, b"{}"]

    def test_continue_and_bodies_are_not_held(self) -> None:
        continue_ = b"HTTP/1.1 100 Continue\r\n\r\n"

        async def steps(transport: _OneWrite, recording: _Recording) -> None:
            transport.write(continue_)
            transport.write(b"chunk")
            assert recording.writes == [continue_, b"chunk"]

        assert self._run(steps).writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"chunk"]

    def test_close_sends_what_is_held_and_the_rest_is_the_transport(self) -> None:
        async def steps(transport: _OneWrite, recording: _Recording) -> None:
            transport.write(HEAD)
            transport.close()
            assert transport.get_extra_info("peername") == "info:peername"

        recording = self._run(steps)
        assert recording.writes == [HEAD] and recording.closed


@pytest.fixture
def served() -> Iterator[tuple[ApiServer, dict[str, str]]]:
    client, headers = _app(InMemoryRotationService(sample_clients(2, fingerprint=FINGERPRINT)))
    server = serve(client.app, ("127.0.0.1", 0))
    try:
        yield server, headers
    finally:
        server.stop()


def _exchange(server: ApiServer, request: bytes, *, until: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        seen = b""
        while until not in seen:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
        return seen


class TestServedAnswers:
    """Served by uvicorn, a read is answered whole, and a caller that expects 100 Continue
    gets it before sending its body."""

    def test_a_read_is_answered_whole(self, served: tuple[ApiServer, dict[str, str]]) -> None:
        server, headers = served
        name = sample_clients(2, fingerprint=FINGERPRINT)[0].name
        answer = _exchange(server, f"GET /v1/clients/{name} HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: {headers['Authorization']}\r\n\r\n".encode(),
                           until=b"}")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f'"name":"{name}"'.encode() in body

    def test_100_continue_is_not_held(self, served: tuple[ApiServer, dict[str, str]]) -> None:
        server, headers = served
        name = sample_clients(2, fingerprint=FINGERPRINT)[0].name
        answer = _exchange(server, f"POST /v1/clients/{name}/consumers HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: {headers['Authorization']}\r\n"
                           "Content-Type: application/json\r\nContent-Length: 2\r\n"
                           "Expect: 100-continue\r\n\r\n".encode(), until=b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")


class TestFastReadAudit:
    """A read answered by the fast path is audited with the middleware's fields, by the
    caller itself when the queue cannot take the event."""

    def test_event_written_when_the_queue_is_closed(self) -> None:
        audit = _Audit()
        client, headers = _app(InMemoryRotationService(
            sample_clients(2, fingerprint=FINGERPRINT)), audit)
        client.app.state.audit_queue.close()  # type: ignore[attr-defined]
        name = sample_clients(2, fingerprint=FINGERPRINT)[0].name
        assert client.get(f"/v1/clients/{name}", headers=headers).status_code == 200
        assert client.app.state.fast_reads.answered == 1  # type: ignore[attr-defined]
        assert audit.written == [dict(
            event="api_request", caller="viewer", auth="token", role="read",
            actor="api:viewer", source_ip="192.0.2.7", method="GET",
            route="/v1/clients/{name}", client=name, status=200, outcome="success",
            reason=None)]


class _SharedJournalService(InMemoryRotationService):
    """A service whose client reads ask a database: they say whether they ran on a loop."""

    reads_wait_on_journal = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_loop: list[bool] = []

    def client(self, name: str) -> ClientState:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().client(name)


class TestSharedJournalReadsOffTheLoop:
    """With a journal several daemons share, reading a client runs in a worker thread, on
    the fast path and on FastAPI's route, so a slow database does not stall the event loop."""

    def test_both_paths_read_in_a_thread(self) -> None:
        service = _SharedJournalService(sample_clients(2, fingerprint=FINGERPRINT))
        client, headers = _app(service)
        name = sample_clients(2, fingerprint=FINGERPRINT)[0].name
        fast = client.get(f"/v1/clients/{name}", headers=headers)
        client.app.fast = None  # type: ignore[attr-defined]  # FastAPI's route only
        routed = client.get(f"/v1/clients/{name}", headers=headers)
        assert fast.status_code == routed.status_code == 200
        assert fast.content == routed.content
        assert service.on_loop == [False, False]


def _nested(c: ClientState) -> ClientOut:
    """The document built model by model, as client_out did before it validated dicts."""
    last = LastRotation(id=redact(c.last_rotation_id), state=safe_text(c.last_rotation_state)) \
        if c.last_rotation_id else None
    return ClientOut(
        name=c.name, client_id=redact(c.client_id), idp=c.idp, stores=list(c.stores),
        condition=c.condition, reason=safe_text(c.reason), last_rotation=last,
        last_success_at=c.last_success_at, age_seconds=c.age_seconds, next_run=c.next_run,
        backoff=Backoff(failures=c.failures, next_attempt=c.next_attempt),
        retire_after=c.retire_after, extra=safe_json(dict(c.extra)),
        secret_expires_at=c.secret_expires_at,
        consumers=[ConsumerOut(instance=redact(x.instance), fingerprint=x.fingerprint,
                               seen_at=x.seen_at, hostname=safe_text(x.hostname), pid=x.pid,
                               current=x.current) for x in c.consumers])


class TestClientDocument:
    """client_out gives, byte for byte, the document built from the nested models, with
    secrets masked, for clients in every condition, with and without consumers."""

    def test_same_bytes_as_the_nested_models(self) -> None:
        secret = Secret(secrets.token_urlsafe(24))
        now = datetime.now(UTC)
        states = sample_clients(12, fingerprint=FINGERPRINT, secret=secret, now=now)
        states[0] = replace(states[0], last_rotation_id=None, last_rotation_state=None,
                            age_seconds=None, last_success_at=None, next_run=None,
                            retire_after=now, secret_expires_at=now,
                            reason=f"stale {secret.reveal()}")
        states[1] = replace(states[1], consumers=[
            ConsumerView("web-1", FINGERPRINT, now, hostname="h1", pid=7, current=True),
            ConsumerView("web-2", FINGERPRINT, now)])
        for state in states:
            body = client_out(state).model_dump_json()
            assert body == _nested(state).model_dump_json()
            assert secret.reveal() not in body


def _served_with_audit(service: InMemoryRotationService) -> tuple[ApiServer, Any, _Audit,
                                                                   dict[str, str]]:
    audit = _Audit()
    client, headers = _app(service, audit)
    return serve(client.app, ("127.0.0.1", 0)), client.app, audit, headers


def _read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole answers (each with a Content-Length) from ``sock``."""
    seen = b""
    answers: list[bytes] = []
    while len(answers) < count:
        head, sep, rest = seen.partition(b"\r\n\r\n")
        if sep:
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            if len(rest) >= length:
                answers.append(head + sep + rest[:length])
                seen = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(answers)} answers"
        seen += chunk
    return answers


def _without(answer: bytes, *names: bytes) -> bytes:
    lines = answer.split(b"\r\n")
    return b"\r\n".join(line for line in lines if line.split(b":", 1)[0].lower() not in names)


class TestAnsweredByTheProtocol:
    """Served by uvicorn, a plain keep-alive read is answered from the HTTP protocol's
    parser callback with the bytes the ASGI path writes, audited the same, and the
    connection goes on (next calls, pipelined calls, other routes); anything else still
    goes the ASGI way."""

    def _setup(self) -> tuple[ApiServer, Any, _Audit, str, bytes]:
        states = sample_clients(3, fingerprint=FINGERPRINT)
        server, app, audit, headers = _served_with_audit(InMemoryRotationService(states))
        request = (f"GET /v1/clients/{states[0].name} HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: {headers['Authorization']}\r\n\r\n").encode()
        return server, app, audit, states[0].name, request

    def test_same_bytes_and_audit_as_the_asgi_path(self) -> None:
        server, app, audit, _name, request = self._setup()
        try:
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(request)
                fast, = _read_answers(sock, 1)
            assert app.state.fast_reads.answered_now == 1
            closing = request.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(closing)  # not keep-alive: the ASGI path answers
                routed, = _read_answers(sock, 1)
            assert app.state.fast_reads.answered_now == 1
            assert app.state.fast_reads.answered == 2
            assert b"connection: close" in routed.lower()
            assert fast.startswith(b"HTTP/1.1 200 OK\r\n")
            assert _without(fast, b"date") == _without(routed, b"date", b"connection")
            app.state.audit_queue.flush()
            assert len(audit.written) == 2 and audit.written[0] == audit.written[1]
            assert audit.written[0]["route"] == "/v1/clients/{name}"
            assert audit.written[0]["source_ip"] == "127.0.0.1"
        finally:
            server.stop()

    def test_keep_alive_and_pipelined_calls_go_on(self) -> None:
        server, app, _, name, request = self._setup()
        other = request.replace(b"GET /v1/clients/" + name.encode(), b"GET /v1/clients")
        unknown = request.replace(name.encode(), b"nobody-here")
        try:
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(request)
                first = _read_answers(sock, 1)
                sock.sendall(request + other + request + unknown + request)  # pipelined
                rest = _read_answers(sock, 5)
            answers = first + rest
            statuses = [a.split(b"\r\n", 1)[0] for a in answers]
            assert statuses == [b"HTTP/1.1 200 OK"] * 4 + [b"HTTP/1.1 404 Not Found",
                                                           b"HTTP/1.1 200 OK"]
            assert b'"items"' in answers[2]  # the list, answered by FastAPI between reads
            assert answers[0].partition(b"\r\n\r\n")[2] == answers[1].partition(b"\r\n\r\n")[2]
            assert app.state.fast_reads.answered_now >= 2
        finally:
            server.stop()

    def test_unusual_reads_go_the_asgi_way(self) -> None:
        server, app, _, _name, request = self._setup()
        variants = [
            request.replace(b" HTTP/1.1", b"?limit=1 HTTP/1.1"),  # a query string
            request.replace(b"Host: x\r\n", b"Host: x\r\nContent-Length: 0\r\n"),
            request.replace(b"GET ", b"HEAD "),
            request.replace(b"Authorization: Bearer ", b"Authorization: Bearer x"),
        ]
        try:
            for variant in variants:
                with socket.create_connection((server.host, server.port), timeout=10) as sock:
                    sock.sendall(variant)
                    seen = b""
                    while b"\r\n\r\n" not in seen:
                        chunk = sock.recv(65536)
                        assert chunk
                        seen += chunk
                    assert seen.startswith(b"HTTP/1.1 ")
            assert app.state.fast_reads.answered_now == 0
        finally:
            server.stop()

    def test_a_full_audit_queue_leaves_it_to_the_asgi_path(self) -> None:
        server, app, _audit, _, request = self._setup()
        try:
            app.state.audit_queue.has_room = lambda: False
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(request)
                answer, = _read_answers(sock, 1)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert app.state.fast_reads.answered_now == 0
            assert app.state.fast_reads.answered == 1
        finally:
            server.stop()
