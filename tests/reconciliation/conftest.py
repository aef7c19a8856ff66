"""A local alert webhook (a real HTTP server on 127.0.0.1) behind the omni_erp_alerts connection."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request, Response

from omni_erp.sandbox.serve import serve_in_thread


class Webhook:
    """What the webhook received, and the status it answers (``status = 503`` makes it refuse every alert)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.refused = 0
        self.status = 200

    def sla_alerts(self) -> list[dict]:
        return [m for m in self.received if m.get("kind") == "sla_breach"]

    def by_rule(self) -> dict[str, dict]:
        alerts = self.sla_alerts()
        by_rule = {m["rule"]: m for m in alerts}
        assert len(by_rule) == len(alerts), f"one rule alerted twice: {[m['rule'] for m in alerts]}"
        return by_rule


@pytest.fixture()
def webhook(monkeypatch) -> Webhook:
    hook = Webhook()
    app = FastAPI()

    @app.post("/alerts")
    async def receive(request: Request) -> Response:
        if hook.status != 200:
            hook.refused += 1
            return Response(status_code=hook.status)
        hook.received.append(await request.json())
        return Response(content="{}", media_type="application/json")

    with serve_in_thread(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", json.dumps({"conn_type": "http", "host": f"{server.url}/alerts"}))
        yield hook
