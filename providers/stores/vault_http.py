"""The hvac client behind :class:`~providers.stores.vault.VaultStore`: how it is set up
(one requests session, the environment read once, redirects only to the same origin), how
it logs in (a token, or AppRole), and how every hvac and requests error becomes a
``StoreError`` (:meth:`VaultConnection._errors`).

hvac and requests are imported on first use, so importing this module loads neither.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

from rotator.errors import (
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from rotator.secrets import Secret, redact

if TYPE_CHECKING:
    import hvac
    import hvac.exceptions as hv
    import requests


def remote_message(exc: hv.VaultError) -> str:
    errors = exc.errors or [str(exc.args[0] if exc.args else "")]
    text = errors if isinstance(errors, str) else "; ".join(map(str, errors))
    return redact(text.strip() or type(exc).__name__)


#: Bytes a Vault answer may have; real ones are a few KiB.
MAX_ANSWER = 1 << 20


@functools.cache
def answer_refused() -> type[Exception]:
    """The error of an answer read no further (too large, encoded, or too slow to arrive),
    defined when requests is first needed."""
    import requests

    class _AnswerRefused(requests.RequestException):
        """Vault's answer was refused as it arrived."""

    return _AnswerRefused


@functools.cache
def bounded_adapter() -> type[Any]:
    """requests' adapter that reads an answer's body within the request's deadline and at
    most :data:`MAX_ANSWER` bytes of it, asked for unencoded (a small compressed body cannot
    expand past the bound). Each socket read is still bounded by the timeout requests is
    given, so an answer dripped a byte at a time ends within about twice the deadline; its
    headers are bounded per read only."""
    import requests.adapters

    refused = answer_refused()

    class _BoundedAdapter(requests.adapters.HTTPAdapter):
        def __init__(self, deadline: float, max_body: int = MAX_ANSWER) -> None:
            super().__init__()
            self._deadline, self._max_body = deadline, max_body

        def send(self, request: requests.PreparedRequest, stream: bool = False,
                 timeout: Any = None, verify: Any = True, cert: Any = None,
                 proxies: Any = None) -> requests.Response:
            started = time.monotonic()
            request.headers["Accept-Encoding"] = "identity"
            response = super().send(request, stream=True, timeout=timeout, verify=verify,
                                    cert=cert, proxies=proxies)
            try:
                response._content = self._body(response, started)
                response._content_consumed = True
            finally:
                response.close()  # back to the pool when read whole, else closed
            return response

        def _body(self, response: requests.Response, started: float) -> bytes:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise refused(f"answer encoded as {encoding[:20]!r} though asked not to be")
            body = bytearray()
            while chunk := response.raw.read1(65536, decode_content=False):
                body += chunk
                if len(body) > self._max_body:
                    raise refused(f"answer larger than {self._max_body} bytes")
                if time.monotonic() - started > self._deadline:
                    raise refused(f"answer not read within {self._deadline:g}s")
            return bytes(body)

    return _BoundedAdapter


@functools.cache
def http_classes() -> tuple[type[Exception], type[requests.Session]]:
    """The redirect refusal and the session class, defined when requests is first needed."""
    import requests

    class _RedirectRefused(requests.RequestException):
        """Vault answered with a redirect that rotator will not follow."""

    class _SameOriginSession(requests.Session):
        """Follows a redirect only to the same host and port over https.

        requests re-sends ``X-Vault-Token`` and a 307's body (an AppRole ``secret_id``) to
        wherever a redirect points; anything else is refused before a byte goes there.
        """

        def get_redirect_target(self, resp: requests.Response) -> str | None:
            target = super().get_redirect_target(resp)
            if target is None:
                return None
            old, new = urlsplit(resp.url), urlsplit(urljoin(resp.url, target))
            if new.scheme != "https" or (new.hostname, new.port) != (old.hostname, old.port):
                resp.close()
                raise _RedirectRefused(
                    f"{old.scheme}://{old.netloc} redirected to {new.scheme}://{new.hostname}"
                    f"{f':{new.port}' if new.port else ''}; rotator follows redirects only to the "
                    "same host over https (point url at the active node)"
                )
            return target

    return _RedirectRefused, _SameOriginSession


def session_for(url: str, verify: str | bool, timeout: float = 10.0
                ) -> tuple[requests.Session, str | bool]:
    """A session for ``url`` that reads the environment once, here, instead of per request,
    and reads each answer within ``timeout`` and at most 1 MiB of it (:func:`bounded_adapter`).

    requests, trusting the environment, scans every variable for proxy settings and looks
    for a netrc file on each request (about 4 ms of a rotation's CPU at ten requests). The
    proxy for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``) and a CA bundle named by
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` are read now and fixed for the session's life,
    as requests would have applied them; netrc is not read (Vault takes a token header).
    """
    import requests

    session = http_classes()[1]()
    adapter = bounded_adapter()(timeout)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(url)
    if verify is True:
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session, verify


class VaultConnection:
    """One store's hvac client: started (and logged in) by :meth:`start`, one API request
    at a time through :meth:`_call`."""

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self._settings = settings
        self._url: str = settings["url"]
        self._mount = str(settings.get("mount") or "secret").strip("/")
        self._timeout = float(settings.get("timeout") or 10.0)
        self._client: hvac.Client | None = None
        #: The token in use (given, or from the AppRole login), held for redaction.
        self._token: Secret | None = None

    @contextmanager
    def _errors(self, path: str, capability: str) -> Iterator[None]:
        """Translate every hvac and requests error raised inside into a ``StoreError``."""
        import hvac.exceptions as hv
        import requests

        where = f"vault store {self.name!r}"
        refused, _ = http_classes()
        try:
            yield
        except hv.VaultDown as exc:
            sealed = "sealed" in remote_message(exc).lower()
            state = "sealed" if sealed else "unavailable (HTTP 503)"
            raise StoreUnavailable(f"{where}: {self._url} is {state}") from exc
        except (hv.Forbidden, hv.Unauthorized) as exc:
            raise StoreAccessDenied(
                f"{where}: permission denied: the token lacks {capability!r} on {path} "
                "(or is invalid or expired)"
            ) from exc
        except hv.InvalidRequest as exc:
            if path.endswith("/login"):
                raise StoreAccessDenied(
                    f"{where}: login at {path} refused: {remote_message(exc)}"
                ) from exc
            if "check-and-set" in remote_message(exc):
                raise StoreConflict(
                    f"{where}: {path} was changed by another writer (check-and-set failed)"
                ) from exc
            raise StoreError(f"{where}: {path}: {remote_message(exc)}") from exc
        except hv.InvalidPath as exc:
            raise StoreNotFound(f"{where}: {path} not found (no KV v2 mount?)") from exc
        except hv.VaultError as exc:
            raise StoreUnavailable(f"{where}: {path}: {remote_message(exc)}") from exc
        except refused as exc:
            raise StoreUnavailable(f"{where}: {path}: {redact(str(exc))}") from exc
        except answer_refused() as exc:
            raise StoreUnavailable(f"{where}: {self._url}: {exc}") from exc
        except requests.Timeout as exc:
            raise StoreUnavailable(
                f"{where}: {self._url} is unreachable (no answer within {self._timeout:g}s)"
            ) from exc
        except requests.RequestException as exc:
            raise StoreUnavailable(
                f"{where}: {self._url} is unreachable: {redact(str(exc))}"
            ) from exc

    def _call(
        self, method: str, path: str, capability: str, body: dict[str, Any] | None = None,
        *, body_of_404: bool = False,
    ) -> dict[str, Any] | None:
        """One API request: its JSON body, ``{}`` for 204, ``None`` for 404.

        With ``body_of_404`` a 404 returns its JSON body instead (KV v2 answers a deleted
        latest version with a 404 that still holds its metadata), ``{}`` if it has none.
        """
        if self._client is None:
            raise StoreUnavailable(f"vault store {self.name!r} is not started")
        url, _, query = path.partition("?")
        # Every segment quoted: a value that slipped past validation stays one path segment.
        quoted = "/".join(quote(segment, safe="") for segment in url.split("/"))
        import hvac.exceptions as hv

        with self._errors(url, capability):
            try:
                answer = self._client.adapter.request(
                    method, f"/v1/{quoted}" + (f"?{query}" if query else ""), json=body
                )
            except hv.InvalidPath as exc:
                if body_of_404:
                    return exc.json if isinstance(exc.json, dict) else {}
                return None
        return answer if isinstance(answer, dict) else {}

    def start(self) -> None:
        self.close()
        s, where = self._settings, f"vault store {self.name!r}"
        token, approle = s.get("token"), s.get("auth") == "approle"
        self._token = token if isinstance(token, Secret) and not approle else None
        if not approle and not isinstance(token, Secret):
            raise StoreAccessDenied(
                f"{where}: auth is 'token' but no token is set; give token_env or token_file"
            )
        if approle and not (s.get("role_id") and isinstance(s.get("secret_id"), Secret)):
            raise StoreAccessDenied(
                f"{where}: auth is 'approle' but role_id or secret_id_env/secret_id_file is missing"
            )
        import hvac

        verify: str | bool = s.get("ca_file") or bool(s.get("tls_verify", True))
        session, verify = session_for(self._url, verify, self._timeout)
        self._client = client = hvac.Client(
            url=self._url,
            token=token.reveal() if isinstance(token, Secret) else None,
            verify=verify,
            timeout=self._timeout,  # type: ignore[arg-type]  # requests takes a float
            namespace=s.get("namespace") or None,
            session=session,
        )
        mount = str(s.get("approle_mount") or "approle").strip("/")
        try:
            if approle:
                with self._errors(f"auth/{mount}/login", "update"):
                    answer = client.auth.approle.login(
                        role_id=s["role_id"], secret_id=s["secret_id"].reveal(),
                        mount_point=mount, use_token=False,
                    )
                auth = answer.get("auth") if isinstance(answer, dict) else None
                login_token = auth.get("client_token") if isinstance(auth, dict) else None
                if not isinstance(login_token, str) or not login_token:
                    raise StoreAccessDenied(f"{where}: login at auth/{mount}/login gave no token")
                # hvac needs the plain value; the Secret makes it redactable everywhere.
                self._token = Secret(login_token)
                client.token = self._token.reveal()
            with self._errors("auth/token/lookup-self", "read"):
                if not client.is_authenticated():
                    raise StoreAccessDenied(
                        f"{where}: the token is not accepted (invalid, expired or revoked)"
                    )
        except StoreError:
            self.close()
            raise

    def close(self) -> None:
        if self._client is not None:
            with suppress(Exception):
                self._client.adapter.close()
            self._client = None
