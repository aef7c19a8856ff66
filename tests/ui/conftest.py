"""A real webhook receiver on 127.0.0.1 for the alert tests."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request, Response


class Receiver:
    """What the webhook received; ``status`` is what it answers (set 503 to simulate a broken channel)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.status = 200


@pytest.fixture()
def webhook(monkeypatch):
    """An HTTP webhook on 127.0.0.1, configured as the ``omni_erp_alerts`` connection."""
    from omni_erp.sandbox.serve import serve_in_thread

    receiver = Receiver()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        receiver.received.append(await request.json())
        receiver.headers.append(dict(request.headers))
        return Response(status_code=receiver.status)

    with serve_in_thread(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", json.dumps({"conn_type": "http", "host": f"{server.url}/hook"}))
        yield receiver
