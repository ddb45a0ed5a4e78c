"""botocore's requests, once signed, sent through a bounded httpx client (:mod:`rotator._bounded`).

botocore's ``read_timeout`` bounds each socket read, not a call, and it reads an answer whole:
an endpoint (or whatever answers in its place) that sends one byte a second, or 256 MB, would
hold a call as long as it likes. :func:`send_through` registers a ``before-send`` hook that
hands each signed request to :func:`rotator._bounded.client` instead: each attempt has the
client's timeout in all and an answer of at most 1 MiB, through the proxy the environment
names for the endpoint (``HTTPS_PROXY``, ``NO_PROXY``), or fails as the botocore error that
botocore retries (a timeout, a connection error) or reports (a refused answer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import botocore.exceptions as bex
import httpx

from rotator import _bounded
from rotator._deadline import DeadlinePassed


class _Body:
    """What botocore reads a response body from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def detail(exc: bex.BotoCoreError) -> str:
    """What went wrong, in the bounded client's own words when it spoke (``no answer within
    0.5s``, ``answer larger than 1048576 bytes``), else botocore's. Not yet redacted."""
    said = getattr(exc, "kwargs", {}).get("error")
    if isinstance(said, DeadlinePassed | _bounded.AnswerRefused):
        return str(said)
    return str(exc)


def send_through(client: Any, service: str, http: httpx.Client) -> None:
    """Send every request of the boto3 ``client`` (whose events are named for ``service``,
    e.g. ``"cognito-idp"``, ``"secrets-manager"``) through ``http``."""
    client.meta.events.register(f"before-send.{service}", _sender(http))


def _sender(http: httpx.Client) -> Callable[..., Any]:
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders

    def send(request: Any, **_: Any) -> Any:
        headers = {k: v.decode() if isinstance(v, bytes) else str(v)
                   for k, v in request.headers.items()}
        body = request.body or b""
        if hasattr(body, "read"):
            body = body.read()
        try:
            # send(), not request(): the request goes as botocore signed it, with none of
            # the client's default headers merged in
            response = http.send(httpx.Request(
                request.method, request.url, headers=headers,
                content=body.encode() if isinstance(body, str) else body))
            content = response.read()
        except httpx.ConnectTimeout as exc:
            raise bex.ConnectTimeoutError(endpoint_url=request.url, error=exc) from None
        except httpx.TimeoutException as exc:  # DeadlinePassed among them
            raise bex.ReadTimeoutError(endpoint_url=request.url, error=exc) from None
        except _bounded.AnswerRefused as exc:
            raise bex.ResponseStreamingError(error=exc) from None
        except httpx.HTTPError as exc:
            raise bex.EndpointConnectionError(endpoint_url=request.url, error=exc) from None
        answer_headers = HTTPHeaders()
        for key, value in response.headers.items():
            answer_headers[key] = value
        return AWSResponse(request.url, response.status_code, answer_headers, _Body(content))

    return send
