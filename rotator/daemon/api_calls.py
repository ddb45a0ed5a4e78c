"""What every admin API call goes through: RFC 9457 problem responses, the per-call record
its audit event is built from, and the middleware that audits each call once (a read call's
event queued for the next group commit, :mod:`rotator.daemon.api_audit`; every other call's
written before the call ends) and turns an unexpected exception into a 500 problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rotator.audit import AuditLog
from rotator.daemon.api_audit import AuditQueue
from rotator.daemon.api_models import FieldProblem, Problem, safe_text
from rotator.daemon.auth import Caller

log = structlog.get_logger("rotator.api")

PROBLEM_JSON = "application/problem+json"


def problem_response(status: int, detail: str | None = None, *,
                     headers: Mapping[str, str] | None = None,
                     errors: list[FieldProblem] | None = None,
                     **extensions: Any) -> JSONResponse:
    """An ``application/problem+json`` response for ``status``."""
    body = Problem(title=HTTPStatus(status).phrase, status=status,
                   detail=safe_text(detail), errors=errors).model_dump(exclude_none=True)
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}),
                        media_type=PROBLEM_JSON)


@dataclass
class CallRecord:
    """What the audit event of one call needs, filled in as the call proceeds."""

    caller: Caller | None = None
    reason: str | None = None


_RECORD = "rotator.call"


def call_record(request: Request) -> CallRecord:
    record = request.scope.get(_RECORD)
    if not isinstance(record, CallRecord):
        record = request.scope[_RECORD] = CallRecord()
    return record


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (``/v1/clients/{name}``), not the path."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _child = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def write_event(audit: AuditLog, fields: dict[str, Any]) -> None:
    """Write one ``api_request`` event now (the caller waits for it to be durable)."""
    try:
        audit.event("api_request", **fields)
    except Exception:  # an audit sink failing must not turn into a second error here
        log.error("api_audit_failed", exc_info=True)


class AuditMiddleware:
    """Audits every HTTP call once, and turns an unexpected exception into a 500 problem.

    A read call's event goes to ``queue`` (:mod:`rotator.daemon.api_audit`) and is written
    one group commit later; every other call's is written before the call ends.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog | None,
                 queue: AuditQueue | None = None) -> None:
        self.app = app
        self.audit = audit
        self.queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = scope[_RECORD] = CallRecord()
        status = 500
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            log.error("api_unexpected_error", error_type=type(exc).__name__, exc_info=True)
            record.reason = "internal error"
            status = 500
            if not started:
                await problem_response(500, "the server failed; see its log")(
                    scope, receive, send)
        finally:
            if self.audit is not None and not self._queued(scope, record, status):
                # The audit log syncs every line to disk: off the event loop, so one call's
                # fsync does not hold up every other call's answer.
                await run_in_threadpool(self._audit, scope, record, status)

    def _queued(self, scope: Scope, record: CallRecord, status: int) -> bool:
        """Whether the event of a read call that succeeded was queued (not waited for)."""
        if self.queue is None or scope.get("method") != "GET" or status >= 400:
            return False
        return self.queue.submit(self._fields(scope, record, status))

    def _audit(self, scope: Scope, record: CallRecord, status: int) -> None:
        if self.audit is not None:
            write_event(self.audit, self._fields(scope, record, status))

    def _fields(self, scope: Scope, record: CallRecord, status: int) -> dict[str, Any]:
        client = scope.get("client")
        caller = record.caller
        params = scope.get("path_params") or {}
        return dict(
            caller=caller.name if caller else None,
            auth=caller.kind if caller else None,
            role=str(caller.role) if caller else None,
            actor=caller.actor if caller else None,
            source_ip=client[0] if client else None,
            method=scope.get("method"),
            route=route_template(scope),
            client=str(params["name"])[:64] if "name" in params else None,
            status=status,
            outcome="success" if status < 400 else "failure",
            reason=record.reason,
        )
