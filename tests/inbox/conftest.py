"""Fixtures for the inbox tests: an in-process client on a fresh ledger and the reference postings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from omni_erp.inbox import InboxSettings, create_inbox_app
from omni_erp.ledger import Ledger

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
API_KEY = "inbox-key-Zq81-never-logged"


def sample(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


class Inbox:
    """A TestClient on the inbox app plus its ledger, with helpers to post as Omni does."""

    def __init__(self, ledger_url: str, api_key: Any = API_KEY) -> None:
        self.client = TestClient(create_inbox_app(InboxSettings(api_key=api_key, ledger_url=ledger_url)))
        self.ledger_url = ledger_url

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url)

    def post(self, body: dict[str, Any] | str | bytes, key: str | None = API_KEY):
        content = json.dumps(body) if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["X-Api-Key"] = key
        return self.client.post("/postings", content=content, headers=headers)


@pytest.fixture()
def inbox_app(sqlite_ledger_url) -> Inbox:
    return Inbox(sqlite_ledger_url)


@pytest.fixture()
def create_posting() -> dict[str, Any]:
    return sample("outward_order_create.json")
