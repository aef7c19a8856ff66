"""Both sandboxes served over real HTTP on 127.0.0.1 for the whole session, reset before every test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from omni_erp.sandbox.erp import create_erp_sandbox
from omni_erp.sandbox.omni import create_omni_sandbox
from omni_erp.sandbox.serve import ServerHandle, serve_in_thread

ERP_TOKEN = "test-erp-token"
OMNI_USER = "test-omni-user"
OMNI_PASSWORD = "test-omni-pass"
INVOICE_DELAY_S = 0.1
TIMEOUT_S = 5.0


class SandboxClient:
    """A ``requests`` session bound to one sandbox: base URL, credentials and a timeout on every call."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers.update(headers)

    def get(self, path: str, *, timeout: float = TIMEOUT_S, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=timeout, **kwargs)

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT_S,
        **kwargs: Any,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["Idempotency-Key"] = key
        return self.session.post(self.url + path, json=body, headers=all_headers, timeout=timeout, **kwargs)

    def state(self) -> dict[str, Any]:
        response = requests.get(self.url + "/_sandbox/state", timeout=TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        response = requests.post(self.url + "/_sandbox/config", json=knobs, timeout=TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def feed(self, path: str, *, at_least: int, timeout_s: float = 3.0) -> list[dict[str, Any]]:
        """Poll a document feed until it holds ``at_least`` items (documents appear asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            items = self.get(path, params={"limit": 500}).json()["items"]
            if len(items) >= at_least or time.monotonic() > deadline:
                return items
            time.sleep(0.02)


@pytest.fixture(scope="session")
def erp_server() -> Iterator[ServerHandle]:
    with serve_in_thread(create_erp_sandbox(token=ERP_TOKEN, invoice_delay_s=INVOICE_DELAY_S)) as handle:
        yield handle


@pytest.fixture(scope="session")
def omni_server() -> Iterator[ServerHandle]:
    with serve_in_thread(create_omni_sandbox(username=OMNI_USER, password=OMNI_PASSWORD)) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _reset_sandboxes(request: pytest.FixtureRequest) -> None:
    """Fresh documents, counters and knobs for every test that uses a sandbox."""
    for name in ("erp_server", "omni_server"):
        if name in request.fixturenames:
            handle: ServerHandle = request.getfixturevalue(name)
            reset = requests.post(handle.url + "/_sandbox/reset", json={"reset_config": True}, timeout=TIMEOUT_S)
            reset.raise_for_status()


@pytest.fixture
def erp(erp_server: ServerHandle) -> SandboxClient:
    return SandboxClient(erp_server.url, {"Authorization": f"Bearer {ERP_TOKEN}"})


@pytest.fixture
def omni(omni_server: ServerHandle) -> SandboxClient:
    return SandboxClient(omni_server.url, {"authUsername": OMNI_USER, "authPassword": OMNI_PASSWORD})
