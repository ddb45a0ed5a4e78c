"""``GET /v1/clients/{name}`` for a caller with a configured token, answered on the event
loop in front of FastAPI: no middleware stack, routing, dependency solving or response
validation.

It is the one route a dashboard or a fleet of consumers polls, so it is the one that must
keep answering fast with many callers (issue 8's benchmark: p99 < 50 ms with 100 concurrent
callers). The answer is the same document the FastAPI route gives (``client_out``, the
route's own response model, serialised by pydantic; a test compares the bytes), and the call
is audited with the same ``api_request`` event the audit middleware writes
(:class:`rotator.daemon.api._AuditMiddleware`): queued like every read call that succeeded,
written by the caller when the queue is full. Anything unusual is left to FastAPI, which
answers and audits it as it always did: a query string, a name the route's pattern refuses,
no or a refused token, a JWT (whose issuer's keys may have to be fetched), a role below
``read``, an unknown client, a service error.

With a journal several daemons share, reading a client asks the database; that read runs
in a worker thread so that a slow database holds up its own callers, not the event loop
(the service says so by ``reads_wait_on_journal``).

Served by uvicorn's httptools protocol, the call does not even become an ASGI request:
:meth:`FastClientRead.answer_now` answers it from the protocol's parser callback
(:mod:`rotator.daemon.api_server`), with no task, request cycle or ASGI messages, when it
can answer without waiting; everything else goes the ASGI way above.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import Scope, Send

from rotator.daemon.api_audit import AuditQueue
from rotator.daemon.api_models import client_out
from rotator.daemon.auth import Authenticator, Caller, Role
from rotator.daemon.model import RotationService

PREFIX = "/v1/clients/"
TEMPLATE = "/v1/clients/{name}"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the route's ClientName pattern
_CONTENT_TYPE = (b"content-type", b"application/json")
#: The audit fields of one caller, kept for this many callers at most.
_MAX_CALLERS = 256

Write = Callable[[dict[str, Any]], None]
#: Sends an answer's body (status line and headers are the caller's).
Respond = Callable[[bytes], None]


class FastClientRead:
    """Answers a plain ``GET /v1/clients/{name}`` itself; says False to leave it to FastAPI.

    ``queue`` takes the call's audit event; when it cannot (full, closed), ``write`` writes
    it in a worker thread before the call ends. Without either, calls are not audited.
    """

    def __init__(self, app: Any, service: RotationService, *,
                 queue: AuditQueue | None = None, write: Write | None = None) -> None:
        self._state = app.state  # its authenticator is replaced on reload: read per call
        self._service = service
        self._queue = queue
        self._write = write
        self._callers: dict[Caller, tuple[str, str, str, str]] = {}
        #: Calls answered here (not by FastAPI), and of those by :meth:`answer_now`; read
        #: by tests.
        self.answered = 0
        self.answered_now = 0

    def _plain(self, method: str, path: str, query: bytes,
               headers: list[tuple[bytes, bytes]]) -> tuple[str, Caller] | None:
        """The client's name and the caller of a plain read; None to leave it to FastAPI."""
        if method != "GET" or query or not path.startswith(PREFIX):
            return None
        name = path[len(PREFIX):]
        if _NAME.fullmatch(name) is None:
            return None
        header = None
        for key, value in headers:
            if key == b"authorization":  # the first one, as starlette's Headers.get
                header = value.decode("latin-1")
                break
        auth: Authenticator = self._state.authenticator
        if header is None or auth.may_block(header):
            return None
        try:
            caller = auth.authenticate(header)
        except Exception:  # refused: FastAPI answers and audits it
            return None
        if caller.role < Role.READ:
            return None
        return name, caller

    async def __call__(self, scope: Scope, send: Send) -> bool:
        """Answer and audit the call in ``scope`` if it is a plain one."""
        plain = self._plain(scope["method"], scope["path"], scope["query_string"],
                            scope["headers"])
        if plain is None:
            return False
        name, caller = plain
        service = self._service
        try:
            state = (await run_in_threadpool(service.client, name)
                     if getattr(service, "reads_wait_on_journal", False)
                     else service.client(name))
            body = client_out(state).model_dump_json().encode()
        except Exception:  # unknown, failing: FastAPI answers and audits it
            return False
        self.answered += 1
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % len(body)), _CONTENT_TYPE]})
            await send({"type": "http.response.body", "body": body})
        finally:
            fields = self._fields(scope.get("client"), caller, name)
            if fields is not None and not self._submit(fields):
                assert self._write is not None
                await run_in_threadpool(self._write, fields)
        return True

    def answer_now(self, path: str, headers: list[tuple[bytes, bytes]],
                   client: tuple[str, int] | None, respond: Respond) -> bool:
        """Answer a plain ``GET`` of ``path`` with ``respond(body)`` and audit it, here and
        now on the event loop; False (nothing done) for a call this cannot answer without
        waiting: one for FastAPI, a read that may wait on the journal's database, an audit
        queue that is full. For the HTTP protocol (:mod:`rotator.daemon.api_server`), which
        then skips the ASGI request cycle."""
        service = self._service
        queue = self._queue
        if getattr(service, "reads_wait_on_journal", False) or (
                queue is not None and not queue.has_room()) or (
                queue is None and self._write is not None):
            return False
        plain = self._plain("GET", path, b"", headers)
        if plain is None:
            return False
        name, caller = plain
        try:
            body = client_out(service.client(name)).model_dump_json().encode()
        except Exception:  # unknown, failing: FastAPI answers and audits it
            return False
        self.answered += 1
        self.answered_now += 1
        try:
            respond(body)
        finally:
            fields = self._fields(client, caller, name)
            if fields is not None and not self._submit(fields):
                assert self._write is not None  # the queue closed meanwhile: stopping
                self._write(fields)
        return True

    def _submit(self, fields: dict[str, Any]) -> bool:
        return self._queue is not None and self._queue.submit(fields)

    def _fields(self, client: Any, caller: Caller, name: str) -> dict[str, Any] | None:
        """The call's ``api_request`` event, field for field the audit middleware's; None
        when calls are not audited."""
        if self._queue is None and self._write is None:
            return None
        known = self._callers.get(caller)
        if known is None:
            if len(self._callers) >= _MAX_CALLERS:
                self._callers.clear()
            known = self._callers[caller] = (caller.name, caller.kind, str(caller.role),
                                             caller.actor)
        return dict(caller=known[0], auth=known[1], role=known[2], actor=known[3],
                    source_ip=client[0] if client else None, method="GET", route=TEMPLATE,
                    client=name, status=200, outcome="success", reason=None)


__all__ = ["FastClientRead"]
