"""Run an ASGI app with uvicorn in a daemon thread and hand back its URL (tests and the sandbox CLI)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class ServerHandle:
    """A running server: ``.url`` to call it, ``.stop()`` (or ``with``) to shut it down."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self.server = server
        self.thread = thread
        self.url = url

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for the thread; safe to call twice."""
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle({self.url!r})"


def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 10.0
) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0 = any free port) and return once it accepts connections.

    :param app: an ASGI application, e.g. the result of ``create_erp_sandbox()``.
    :param host: interface to bind; the default keeps the server off the network.
    :param port: TCP port; 0 lets the OS choose, read back from the bound socket.
    :param startup_timeout_s: how long to wait for uvicorn's ``started`` flag.
    :raises RuntimeError: when the server does not start (port taken, app startup failed).
    """
    # A short graceful-shutdown window, because the sandboxes may be sleeping on an injected timeout.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=_run, args=(server,), name=f"uvicorn-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on {host}:{port} exited during startup (see the uvicorn error above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start within {startup_timeout_s} s")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return ServerHandle(server, thread, f"http://{url_host}:{bound_port}")


def _run(server: uvicorn.Server) -> None:
    try:
        server.run()
    except SystemExit:
        pass  # uvicorn exits this way when it cannot bind or start; serve_in_thread reports it


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for servers started in another process)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
