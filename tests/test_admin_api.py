"""providers.idps._admin_api.AdminApi: the admin API client Hydra and Glewlwyd share."""

from __future__ import annotations

import httpx
import pytest

from providers.idps._admin_api import AdminApi
from rotator.errors import IdentityProviderError, IdpAccessDenied, IdpNotFound, IdpUnavailable


def _api(handler: object) -> AdminApi:
    return AdminApi("Hydra 'h'", "http://127.0.0.1:4445", base_url="http://127.0.0.1:4445",
                    timeout=5.0, verify=True, error_fields=("error", "error_description"),
                    transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


class TestAdminApiLifecycle:
    """A request is sent only between start() and close(); outside, it is refused by name."""

    def test_not_started(self) -> None:
        api = _api(lambda request: httpx.Response(200))
        with pytest.raises(IdentityProviderError, match=r"^Hydra 'h' is not started$"):
            api.request("GET", "/admin/clients")

    def test_started_then_closed(self) -> None:
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.url.path)
            return httpx.Response(204)

        api = _api(handler)
        api.start()
        assert api.request("GET", "/admin/clients").status_code == 204
        api.close()
        api.close()  # twice is harmless
        with pytest.raises(IdentityProviderError):
            api.request("GET", "/admin/clients")
        assert seen == ["/admin/clients"]


class TestAdminApiTransport:
    """A request that gets no answer is IdpUnavailable naming the IdP and URL, never a secret."""

    @pytest.mark.parametrize(("error", "kind"), [
        (httpx.ConnectError, "is unreachable"), (httpx.ReadTimeout, "timed out")])
    def test_translated(self, error: type[httpx.TransportError], kind: str) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise error("boom", request=request)

        api = _api(handler)
        api.start()
        with pytest.raises(IdpUnavailable,
                           match=rf"^Hydra 'h' at http://127\.0\.0\.1:4445 {kind}: boom$"):
            api.request("GET", "/admin/clients")
        api.close()


class TestAdminApiStatus:
    """An answer outside ``ok`` raises the error its status means, quoting the IdP's text."""

    @pytest.mark.parametrize(("status", "error", "message"), [
        (401, IdpAccessDenied, r"^Hydra 'h': GET /c was refused \(HTTP 401\); check it$"),
        (403, IdpAccessDenied, r"^Hydra 'h': GET /c was refused \(HTTP 403\); check it$"),
        (404, IdpNotFound, r"^Hydra 'h': /c not found: .*no such client"),
        (429, IdpUnavailable, r"^Hydra 'h': GET /c answered HTTP 429: .*no such client"),
        (502, IdpUnavailable, r"^Hydra 'h': GET /c answered HTTP 502: .*no such client"),
        (409, IdentityProviderError, r"^Hydra 'h': GET /c answered HTTP 409: .*no such client"),
    ])
    def test_mapped(self, status: int, error: type[Exception], message: str) -> None:
        api = _api(lambda request: httpx.Response(
            status, json={"error": "e", "error_description": "no such client"}))
        api.start()
        with pytest.raises(error, match=message) as caught:
            api.call("GET", "/c", ok=(200,), refused="check it")
        assert type(caught.value) is error
        api.close()

    def test_ok_is_returned(self) -> None:
        api = _api(lambda request: httpx.Response(404))
        api.start()
        assert api.call("GET", "/c", ok=(404, 405), refused="").status_code == 404
        api.close()
