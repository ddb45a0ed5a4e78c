"""The bounded HTTP client (rotator._bounded) loads its CA bundle once per client built."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from rotator import _bounded


class TestOneTlsContextPerClient:
    """Building a bounded client loads the CA bundle into one TLS context, not two: the load
    costs more CPU than a request (about 50 ms), and a run builds a client per IdP."""

    def test_loaded_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loads: list[Any] = []
        real = ssl.SSLContext.load_verify_locations

        def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
            loads.append(args or kwargs)
            real(context, *args, **kwargs)

        monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
        client = _bounded.client(timeout=5.0)
        client.close()
        assert len(loads) == 1, loads
