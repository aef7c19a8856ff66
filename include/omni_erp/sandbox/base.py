"""What every sandbox is built from: a state class (its documents and rules under one lock) and the app around it.

A sandbox module reads config class -> state class -> router -> factory; the factory ends with
:func:`sandbox_app`, which adds what all sandboxes share: the fault middleware and error handlers of
:class:`~omni_erp.sandbox.faults.FaultInjector` (``/_sandbox/config``, ``/faults``, ``/release``),
``GET /_sandbox/state``, ``POST /_sandbox/reset`` and, when asked, a ticker thread that publishes due documents.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic

from fastapi import APIRouter, FastAPI

from omni_erp.sandbox.faults import ConfigT, FaultInjector

log = logging.getLogger(__name__)


class SandboxState(Generic[ConfigT]):
    """A sandbox's documents, the rules that change them, and one lock that callers hold around both.

    Subclasses set up their documents in :meth:`clear`, list them for ``GET /_sandbox/state`` in
    :meth:`documents`, and publish what falls due with time (an ERP's e-invoices) in :meth:`tick`; all three are
    called with :attr:`lock` held. :attr:`config` is read live, so ``POST /_sandbox/config`` applies at once.
    ``__init__`` calls :meth:`clear`, so a subclass sets its own constructor arguments before ``super().__init__``.

    :param config: returns the current knobs (the fault injector's, e.g. ``lambda: faults.config``).
    """

    def __init__(self, config: Callable[[], ConfigT]) -> None:
        self.lock = threading.Lock()
        self._config = config
        self.clear()

    @property
    def config(self) -> ConfigT:
        return self._config()

    def clear(self) -> None:
        """Forget every document and counter (lock held)."""
        raise NotImplementedError

    def documents(self) -> dict[str, Any]:
        """The sandbox's own part of ``GET /_sandbox/state`` (lock held)."""
        raise NotImplementedError

    def tick(self) -> None:
        """Publish the documents whose time has come (lock held); nothing by default."""

    def reset(self) -> None:
        with self.lock:
            self.clear()

    def view(self) -> dict[str, Any]:
        """:meth:`documents` after publishing what is due."""
        with self.lock:
            self.tick()
            return self.documents()


def sandbox_app(
    title: str,
    faults: FaultInjector[Any],
    state: SandboxState[Any],
    router: APIRouter,
    *,
    tick_every_s: float | None = None,
) -> FastAPI:
    """The FastAPI app of one sandbox: ``router`` behind ``faults``, plus the shared ``/_sandbox`` controls.

    ``GET /_sandbox/state`` answers ``config``, then ``state.documents()``, then the fault counts and rejections;
    ``POST /_sandbox/reset`` clears ``state`` and the counts (``{"reset_config": true}`` also the knobs).

    :param title: the app's title.
    :param faults: the sandbox's fault injector (its knobs are the sandbox's config).
    :param state: the sandbox's state.
    :param router: the sandbox's API routes (and any ``/_sandbox`` route of its own, e.g. PDFs).
    :param tick_every_s: when set, a thread calls ``state.tick()`` this often while the app runs, so documents
        appear without requests (otherwise they appear lazily, at the next request that ticks).
    """
    lifespan = _ticking(state, tick_every_s, name=f"{title} ticker") if tick_every_s else None
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    faults.install(app)
    app.include_router(router)

    async def sandbox_state() -> dict[str, Any]:
        return {"config": faults.config.model_dump(mode="json"), **state.view(), **faults.snapshot()}

    app.add_api_route("/_sandbox/state", sandbox_state, methods=["GET"])
    faults.install_reset(app, state.reset)
    return app


def _ticking(
    state: SandboxState[Any], every_s: float, *, name: str
) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every_s):
                try:
                    with state.lock:
                        state.tick()
                except Exception:  # a sandbox bug must not silently stop every later document
                    log.exception("%s failed to publish documents", name)

        ticker = threading.Thread(target=run, name=name, daemon=True)
        ticker.start()
        yield
        stop.set()
        ticker.join(1)

    return lifespan
