"""The daemon starts and answers fast: store facts read with each store opened once, not per
client; the API socket does not wait for delayed ACKs."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from test_daemon import load, write_config

import providers.stores.env as env_store
from rotator.daemon.model import Condition
from rotator.daemon.service import Service, due_clients
from rotator.engine import utcnow


class TestStartUpOpensEachStoreOnce:
    """Many clients in one env file: start-up and rotate --due parse that file once."""

    def test_one_parse_for_fifty_clients(self, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        names = {f"c{i:02d}": 'rotate_every = "30d"' for i in range(50)}
        path = write_config(tmp_path, names)
        lines = [f"{n.upper()}_CLIENT_ID={n}\n{n.upper()}_CLIENT_SECRET={secrets.token_hex(12)}"
                 for n in names]
        (tmp_path / "creds.env").write_text("\n".join(lines) + "\n")
        (tmp_path / "creds.env").chmod(0o600)
        parses = []
        real = env_store.parse_env

        def counting(text: str) -> dict[str, str]:
            parses.append(1)
            return real(text)

        monkeypatch.setattr(env_store, "parse_env", counting)
        config = load(path)
        service = Service(config, worker_factory=lambda *a: None)  # type: ignore[arg-type,return-value]
        service.prepare()
        assert len(parses) == 1
        assert {c.condition for c in service.clients()} == {Condition.DUE}  # no facts: due
        service.close()
        parses.clear()
        journal = service._journal()
        assert len(due_clients(config, journal, list(names), utcnow())) == 50
        assert len(parses) == 1
        service.close()


class TestApiSocket:
    """The API's listening socket sets TCP_NODELAY, so answers do not wait for delayed ACKs."""

    def test_nodelay(self) -> None:
        import socket

        from rotator.daemon.api_server import serve

        async def app(scope: dict[str, object], receive: object, send: object) -> None:
            pass

        server = serve(app, ("127.0.0.1", 0))
        try:
            assert server._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            server.stop()
