"""Serve an ASGI app with uvicorn in a background thread on 127.0.0.1 and a free port."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Self

import uvicorn


class ServedApp:
    """An ASGI app served by uvicorn on 127.0.0.1, in a daemon thread: ``start()`` to
    ``stop()``, or ``with ServedApp(app) as served``. Its port is bound, and ``url`` known,
    from the start, so no other process can take the port in between."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class ServedFake:
    """A fake whose Starlette ``app`` is served while its ``with`` block runs, at ``url``."""

    app: Any
    _served: ServedApp | None = None

    def __enter__(self) -> Self:
        self._served = ServedApp(self.app).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._served is not None:
            self._served.__exit__(*exc)

    @property
    def url(self) -> str:
        assert self._served is not None
        return self._served.url
