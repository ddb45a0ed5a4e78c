"""The daemon's admin API: an ASGI app (FastAPI) over :class:`RotationService`.

Routes (``docs/api.md``; the OpenAPI document is ``docs/openapi.json``)::

    GET  /healthz                              no token     the process answers
    GET  /readyz                               read         config, journal, scheduler
    GET  /metrics                              read         Prometheus text format
    GET  /v1/clients?limit=&after=             read         one page of clients
    GET  /v1/clients/{name}                    read         one client
    GET  /v1/rotations/{id}                    read         one rotation and its steps
    POST /v1/clients/{name}/rotations          rotate       202, joins a running rotation
    POST /v1/clients/{name}/verifications      rotate       does the stored secret work?
    POST /v1/clients/{name}/retirements?now=   admin        202, retire the old secret
    POST /v1/clients/{name}/consumers          consumer     204, which secret a consumer uses

Every call, refused ones too, is one ``api_request`` audit event (caller, source address,
route template, status, outcome). Every error is an RFC 9457 problem document
(``application/problem+json``), never an HTML page or a traceback. Responses carry
fingerprints, never secrets: every string from the service passes :func:`redact`, and
:class:`~rotator.secrets.Secret` values render masked.

:func:`serve` (:mod:`rotator.daemon.api_server`) runs the app under uvicorn in a thread
for ``rotator run``; the response bodies are in :mod:`rotator.daemon.api_models`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated, Any, cast
from urllib.parse import quote

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from rotator import __version__
from rotator.audit import AuditLog
from rotator.daemon.api_audit import AuditQueue
from rotator.daemon.api_calls import (
    PROBLEM_JSON,
    AuditMiddleware,
    call_record,
    problem_response,
    write_event,
)
from rotator.daemon.api_fast import FastClientRead
from rotator.daemon.api_models import (
    ClientOut,
    ClientPage,
    ConsumerIn,
    FieldProblem,
    HealthOut,
    Problem,
    ReadinessOut,
    RotationOut,
    TriggerOut,
    VerificationOut,
    accepted,
    client_out,
    rotation_out,
    safe_json,
)
from rotator.daemon.api_server import ApiServer, ApiServerError, serve
from rotator.daemon.auth import Authenticator, Caller, JwksUnavailable, Role, Unauthenticated
from rotator.daemon.model import (
    RotationService,
    ServiceUnavailable,
    UnknownClient,
    UnknownRotation,
)
from rotator.errors import RotatorError
from rotator.secrets import redact

log = structlog.get_logger("rotator.api")

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ROTATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
#: Seconds a caller is asked to wait after a 503.
RETRY_AFTER_SECONDS = 5
MAX_PAGE = 1000


# -- the app ----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="A token from [[api.tokens]] or a JWT access token")
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": HTTPStatus(status).phrase}
    for status in (401, 403, 422, 503)
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such client or rotation"}}
_LOCATION = {"Location": {"description": "the rotation's URL", "schema": {"type": "string"}}}

ClientName = Annotated[str, PathParam(pattern=_NAME_PATTERN, description="a configured client")]


def _caller_with(role: Role, *, exact: bool = False) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the authenticated caller, refused (401/403/503) unless it has ``role``
    (a stronger one too, unless ``exact``)."""
    async def dependency(request: Request, _credentials: Annotated[
            HTTPAuthorizationCredentials | None, Security(_bearer)]) -> Caller:
        auth: Authenticator = request.app.state.authenticator
        record = call_record(request)
        header = request.headers.get("authorization")
        try:
            # A configured token is checked on the event loop; a JWT, whose issuer's keys
            # may have to be fetched, in a thread.
            caller = (await run_in_threadpool(auth.authenticate, header)
                      if auth.may_block(header) else auth.authenticate(header))
        except JwksUnavailable as exc:
            record.reason = exc.reason
            raise HTTPException(503, "cannot check the token now; try again",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except Unauthenticated as exc:
            record.reason = exc.reason
            challenge = 'Bearer realm="rotator"'
            if request.headers.get("authorization"):
                challenge += ', error="invalid_token"'
            raise HTTPException(401, exc.reason,
                                headers={"WWW-Authenticate": challenge}) from None
        record.caller = caller
        if caller.role < role or (exact and caller.role != role):
            record.reason = f"role {caller.role} may not do what needs {role}"
            raise HTTPException(
                403, f"this needs the {role} role; {caller.name} has {caller.role}",
                headers={"WWW-Authenticate":
                         'Bearer realm="rotator", error="insufficient_scope"'})
        return caller
    return dependency


async def _no_unknown_query(request: Request) -> None:
    """Refuse query parameters the route does not take: a misspelt option is not ignored.

    ``async``: it only reads the request, so it runs on the event loop, not in a thread.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {p.alias for p in dependant.query_params}
    unknown = sorted({k for k in request.query_params if k not in known})
    if unknown:
        raise RequestValidationError([
            {"loc": ("query", name[:64]), "msg": "unknown query parameter",
             "type": "extra_forbidden"} for name in unknown])


Reader = Annotated[Caller, Security(_caller_with(Role.READ))]
Rotator = Annotated[Caller, Security(_caller_with(Role.ROTATE))]
Admin = Annotated[Caller, Security(_caller_with(Role.ADMIN))]
Consumer = Annotated[Caller, Security(_caller_with(Role.CONSUMER, exact=True))]


class _AdminApp(FastAPI):
    """The FastAPI app with a plain ``GET /v1/clients/{name}`` answered in front of it
    (:mod:`rotator.daemon.api_fast`), before its middleware and routing."""

    fast: FastClientRead | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and scope["type"] == "http" and await fast(scope, send):
            return
        await super().__call__(scope, receive, send)


def create_app(service: RotationService, *, auth: Authenticator, audit: AuditLog | None,
               metrics: Any = None) -> FastAPI:
    """The admin API over ``service``; callers checked by ``auth``, calls audited to ``audit``.

    ``metrics`` (a :class:`rotator.daemon.metrics.Metrics`) serves ``/metrics``.
    """
    app = _AdminApp(title="rotator admin API", version=__version__,
                  description="Inspect and drive the rotation of OAuth 2.0 client secrets.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  generate_unique_id_function=lambda route: route.name,
                  dependencies=[Depends(_no_unknown_query)])

    app.state.authenticator = auth

    @app.get("/healthz", response_model=HealthOut, tags=["health"],
             summary="The process is alive (no token needed)")
    def healthz() -> HealthOut:
        return HealthOut()

    @app.get("/readyz", response_model=ReadinessOut, tags=["health"],
             summary="Configuration loaded, journal writable, scheduler running",
             responses={**_ERRORS})
    def readyz(_caller: Reader) -> Any:
        r = service.readiness()
        out = ReadinessOut(ready=r.ready, config_loaded=r.config_loaded,
                           journal_writable=r.journal_writable,
                           scheduler_running=r.scheduler_running)
        if not r.ready:
            return problem_response(503, "not ready", checks=out.model_dump())
        return out

    @app.get("/v1/clients", response_model=ClientPage, tags=["clients"],
             summary="Every configured client, sorted by name, one page at a time",
             responses={**_ERRORS})
    def list_clients(
        _caller: Reader,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="clients per page")] = 100,
        after: Annotated[str | None, Query(pattern=_NAME_PATTERN,
                                           description="start after this client")] = None,
    ) -> ClientPage:
        clients = service.clients(after=after, limit=limit + 1)  # one more: is there a next
        page = clients[:limit]
        more = len(clients) > limit
        return ClientPage(items=[client_out(c) for c in page],
                          next=f"/v1/clients?limit={limit}&after={quote(page[-1].name)}"
                          if more else None)

    @app.get("/v1/clients/{name}", response_model=ClientOut, tags=["clients"],
             summary="One client: condition, stores, IdP, last rotation, age, next run, backoff",
             responses={**_ERRORS, **_NOT_FOUND})
    async def get_client(name: ClientName, _caller: Reader) -> ClientOut:
        # On the event loop, no thread hop: the lookup is a dictionary read under the
        # service's lock, which nothing holds while it reads a store or the journal; with a
        # shared journal it asks the database, in a thread.
        if getattr(service, "reads_wait_on_journal", False):
            return client_out(await run_in_threadpool(service.client, name))
        return client_out(service.client(name))

    @app.post("/v1/clients/{name}/rotations", response_model=TriggerOut, status_code=202,
              tags=["rotations"], summary="Rotate now, or join the rotation under way",
              responses={202: {"headers": _LOCATION}, **_ERRORS, **_NOT_FOUND})
    def trigger_rotation(
        name: ClientName, caller: Rotator, response: Response,
        idempotency_key: Annotated[str | None, Header(
            alias="Idempotency-Key", pattern=_IDEMPOTENCY_KEY_PATTERN,
            description="the same key within 24 h returns the first answer")] = None,
    ) -> TriggerOut:
        trigger = service.trigger_rotation(name, actor=caller.actor,
                                           idempotency_key=idempotency_key)
        return accepted(trigger, response)

    @app.post("/v1/clients/{name}/retirements", response_model=TriggerOut, status_code=202,
              tags=["rotations"],
              summary="Retire the old secret of the last rotation (at once with now=true)",
              responses={202: {"headers": _LOCATION}, **_ERRORS, **_NOT_FOUND})
    def trigger_retirement(
        name: ClientName, caller: Admin, response: Response,
        now: Annotated[bool, Query(description="retire without waiting out the grace "
                                               "period")] = False,
    ) -> TriggerOut:
        return accepted(service.trigger_retirement(name, actor=caller.actor, now=now),
                         response)

    @app.post("/v1/clients/{name}/verifications", response_model=VerificationOut,
              tags=["rotations"],
              summary="Check that the stored current credential obtains a token",
              responses={**_ERRORS, **_NOT_FOUND})
    def verify(name: ClientName, caller: Rotator) -> VerificationOut:
        return VerificationOut(client=name,
                               result=safe_json(dict(service.verify(name, actor=caller.actor))))

    @app.post("/v1/clients/{name}/consumers", status_code=204, tags=["consumers"],
              summary="A consumer reports which secret it uses (its fingerprint)",
              response_class=Response,
              responses={204: {"description": "kept as this instance's last report"},
                         400: {"model": Problem, "description": "the body is not JSON"},
                         **_ERRORS, **_NOT_FOUND})
    def report_consumer(name: ClientName, report: ConsumerIn, _caller: Consumer) -> Response:
        service.report_consumer(name, instance=report.instance,
                                fingerprint=report.fingerprint, hostname=report.hostname,
                                pid=report.pid)
        return Response(status_code=204)

    @app.get("/v1/rotations/{rotation_id}", response_model=RotationOut, tags=["rotations"],
             summary="One rotation: its state and its steps with their times",
             responses={**_ERRORS, **_NOT_FOUND})
    def get_rotation(
        rotation_id: Annotated[str, PathParam(pattern=_ROTATION_ID_PATTERN)], _caller: Reader,
    ) -> RotationOut:
        return rotation_out(service.rotation(rotation_id))

    if metrics is not None:
        metrics.bind(service)

        @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text format)",
                 response_class=Response,
                 responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                  "description": "Prometheus text exposition format"},
                            **_ERRORS})
        def metrics_text(_caller: Reader) -> Response:
            body, content_type = metrics.render()
            return Response(body, media_type=content_type)

    _install_problem_handlers(app)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    queue = app.state.audit_queue = AuditQueue(
        lambda fields: audit.event("api_request", **fields),
        batch=getattr(audit, "deferred", None)) if audit is not None else None
    app.fast = app.state.fast_reads = FastClientRead(
        app, service, queue=queue,
        write=functools.partial(write_event, audit) if audit is not None else None)
    app.add_middleware(AuditMiddleware, audit=audit, queue=queue)
    return app


def _install_problem_handlers(app: FastAPI) -> None:
    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) and \
            exc.detail != HTTPStatus(exc.status_code).phrase else None
        return problem_response(exc.status_code, detail, headers=exc.headers)

    async def invalid_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [FieldProblem(loc=[str(x) if not isinstance(x, int) else x
                                    for x in e.get("loc", ())],
                               message=str(e.get("msg", "invalid")))
                  for e in exc.errors()]
        call_record(request).reason = "invalid input"
        return problem_response(422, "the request is not valid", errors=errors)

    async def service_error(request: Request, exc: Exception) -> Response:
        record = call_record(request)
        if isinstance(exc, UnknownClient | UnknownRotation):
            record.reason = type(exc).__name__
            return problem_response(404, str(exc))
        if isinstance(exc, ServiceUnavailable):
            record.reason = "service unavailable"
            return problem_response(503, str(exc),
                                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        log.error("api_service_error", error_type=type(exc).__name__, error=redact(str(exc)))
        record.reason = type(exc).__name__
        return problem_response(500, "the service failed; see its log")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_input)
    app.add_exception_handler(RotatorError, service_error)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, errors documented as ``application/problem+json``."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    doc.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    doc.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def openapi_text() -> str:
    """The committed ``docs/openapi.json``: ``python -m rotator.daemon.api > docs/openapi.json``.

    Built from an app over no service (the document does not depend on one).
    """
    import json

    from rotator.daemon.metrics import Metrics

    app = create_app(cast(RotationService, object()), auth=Authenticator(), audit=None,
                     metrics=Metrics())
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


__all__ = ["ApiServer", "ApiServerError", "Problem", "create_app", "openapi_document",
           "openapi_text", "problem_response", "serve"]

if __name__ == "__main__":
    import sys

    sys.stdout.write(openapi_text())
