"""``GET /v1/clients/{name}`` for a caller with a configured token, answered on the event
loop without FastAPI's routing, dependency solving and response validation.

It is the one route a dashboard or a fleet of consumers polls, so it is the one that must
keep answering fast with many callers (issue 8's benchmark: p99 < 50 ms with 100 concurrent
callers). The answer is the same document the FastAPI route gives (``client_out``, the
route's own response model, serialised by pydantic; a test compares the bytes), and the call
is audited the same way, by :class:`rotator.daemon.api._AuditMiddleware`, which asks this
first. Anything unusual is left to FastAPI, which answers it as it always did: a query
string, a name the route's pattern refuses, no or a refused token, a JWT (whose issuer's
keys may have to be fetched), a role below ``read``, an unknown client, a service error.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import Scope, Send

from rotator.daemon.api_models import client_out
from rotator.daemon.auth import Authenticator, Role
from rotator.daemon.model import RotationService

PREFIX = "/v1/clients/"
TEMPLATE = "/v1/clients/{name}"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the route's ClientName pattern


class FastClientRead:
    """Answers a plain ``GET /v1/clients/{name}`` itself; says False to leave it to FastAPI."""

    def __init__(self, app: Any, service: RotationService) -> None:
        self._state = app.state  # its authenticator is replaced on reload: read per call
        self._service = service
        self._route = next(r for r in app.routes if getattr(r, "path", None) == TEMPLATE)
        #: Calls answered here (not by FastAPI); read by tests.
        self.answered = 0

    async def __call__(self, scope: Scope, record: Any, send: Send) -> bool:
        """Answer the call in ``scope`` if it is a plain one; fill ``record`` (the caller)
        and ``scope`` (route, path parameters) as FastAPI would, for the audit event."""
        path = scope.get("path", "")
        if scope.get("method") != "GET" or scope.get("query_string") or \
                not path.startswith(PREFIX):
            return False
        name = path[len(PREFIX):]
        if _NAME.fullmatch(name) is None:
            return False
        header = None
        for key, value in scope.get("headers", ()):
            if key == b"authorization":  # the first one, as starlette's Headers.get
                header = value.decode("latin-1")
                break
        auth: Authenticator = self._state.authenticator
        if header is None or auth.may_block(header):
            return False
        try:
            caller = auth.authenticate(header)
            if caller.role < Role.READ:
                return False
            body = client_out(self._service.client(name)).model_dump_json().encode()
        except Exception:  # refused, unknown, failing: FastAPI answers and audits it
            return False
        record.caller = caller
        self.answered += 1
        scope["route"], scope["path_params"] = self._route, {"name": name}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return True


__all__ = ["FastClientRead"]
