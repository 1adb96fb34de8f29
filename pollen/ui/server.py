"""Serve the dashboard from a background thread of the process that runs the federation (uvicorn)."""

from __future__ import annotations

import threading
from typing import Any

from pollen.errors import ConfigError, require


class UiServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread.

    Args:
        app: the ASGI application (``pollen.ui.api.create_app``).
        host: the address to bind (default 127.0.0.1: this machine only).
        port: the TCP port (0: any free one; :attr:`port` tells which).

    Raises:
        ConfigError: the port cannot be bound (in use, or not allowed).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8765) -> None:
        uvicorn = require("uvicorn", "ui", "the dashboard (pollen ui, --ui-port)")
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pollen-ui", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.02)
        if not self._server.started:
            raise ConfigError(f"the dashboard could not listen on {host}:{port} (port in use or not allowed); "
                              "choose another --ui-port")
        self.host = host
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor
            self._failed = exc
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            self._failed = exc

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving (waits up to a few seconds)."""
        self._server.should_exit = True
        self._thread.join(5.0)
