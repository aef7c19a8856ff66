"""What every sandbox shares through ``sandbox_app``: latency that overlaps, the concurrency cap, state and reset.

Run against all four sandboxes (generic ERP, ERPNext, Tally, Omni), each served on 127.0.0.1, plus a minimal
sandbox built from :mod:`omni_erp.sandbox.base` the way a new ERP's would be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from fastapi import APIRouter, Request

from omni_erp.sandbox.base import SandboxState, sandbox_app
from omni_erp.sandbox.erp import ErpSandboxConfig, ErpState, create_erp_sandbox
from omni_erp.sandbox.erpnext import create_erpnext_sandbox
from omni_erp.sandbox.faults import ApiError, FaultConfig, FaultInjector, read_json
from omni_erp.sandbox.omni import create_omni_sandbox
from omni_erp.sandbox.serve import ServerHandle, serve_in_thread
from omni_erp.sandbox.tally import create_tally_sandbox

TIMEOUT_S = 5.0
TALLY_EXPORT = (
    "<ENVELOPE><HEADER><VERSION>1</VERSION><TALLYREQUEST>Export</TALLYREQUEST><TYPE>Collection</TYPE>"
    "<ID>Nothing</ID></HEADER><BODY><DESC></DESC></BODY></ENVELOPE>"
)
OMNI_INVOICE = {
    "invoiceNumber": "RB2627/000001",
    "invoiceDate": "2026-11-20T11:00:00.000+05:30",
    "forwardPurchaseOrder": "4042640641",
    "irnNumber": "a" * 64,
    "qrCode": "signed-qr",
    "isPartialInvoice": False,
    "invoiceURL": "http://erp.example/RB2627-000001.pdf",
}

# kind -> (app factory, one cheap API call as (session, base url) -> response)
Call = Callable[[requests.Session, str], requests.Response]
SANDBOXES: dict[str, tuple[Callable[[], Any], Call]] = {
    "generic": (
        lambda: create_erp_sandbox(token="t"),
        lambda s, url: s.get(url + "/api/v1/e-invoices", headers={"Authorization": "Bearer t"}, timeout=TIMEOUT_S),
    ),
    "erpnext": (
        lambda: create_erpnext_sandbox(api_key="k", api_secret="s"),
        lambda s, url: s.get(url + "/api/resource/Sales Order", headers={"Authorization": "token k:s"}, timeout=TIMEOUT_S),
    ),
    "tally": (
        create_tally_sandbox,
        lambda s, url: s.post(url + "/", data=TALLY_EXPORT, timeout=TIMEOUT_S),
    ),
    "omni": (
        lambda: create_omni_sandbox(username="u", password="p"),
        lambda s, url: s.post(
            url + "/ajio-vms/b2bInvoice/posting", json=OMNI_INVOICE,
            headers={"authUsername": "u", "authPassword": "p"}, timeout=TIMEOUT_S,
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(SANDBOXES))
def sandbox(request: pytest.FixtureRequest) -> Iterator[tuple[ServerHandle, Call]]:
    factory, call = SANDBOXES[request.param]
    with serve_in_thread(factory()) as handle:
        yield handle, call


@pytest.fixture(autouse=True)
def _fresh(sandbox: tuple[ServerHandle, Call]) -> None:
    _post(sandbox[0].url + "/_sandbox/reset", {"reset_config": True})


def _post(url: str, body: Any) -> dict[str, Any]:
    response = requests.post(url, json=body, timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _state(url: str) -> dict[str, Any]:
    response = requests.get(url + "/_sandbox/state", timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _together(clients: int, call: Call, url: str) -> tuple[list[requests.Response], float]:
    """``clients`` threads make one call each, released at the same moment; their answers and the wall time."""
    responses: list[requests.Response] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        session = requests.Session()
        start.wait()
        responses.append(call(session, url))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    return responses, time.monotonic() - started


def test_latency_does_not_block_the_server_so_concurrent_calls_overlap(sandbox: tuple[ServerHandle, Call]) -> None:
    handle, call = sandbox
    _post(handle.url + "/_sandbox/config", {"latency_ms": 200, "max_concurrency": 16})

    responses, elapsed = _together(16, call, handle.url)

    assert [r.status_code for r in responses] == [200] * 16
    # A blocking sleep would serialise them: 16 x 200 ms = 3.2 s. Overlapping, they take one latency plus overhead.
    assert 0.2 <= elapsed < 16 * 0.2 / 2, elapsed


def test_calls_beyond_max_concurrency_get_429_with_retry_after(sandbox: tuple[ServerHandle, Call]) -> None:
    handle, call = sandbox
    # Four calls hold every slot (stalled after their work until released); the next ones find the server full.
    _post(handle.url + "/_sandbox/config", {"max_concurrency": 4, "retry_after_s": 2, "stall_next": 4, "stall_s": 10})
    held: list[requests.Response] = []
    holders = [threading.Thread(target=lambda: held.append(call(requests.Session(), handle.url))) for _ in range(4)]
    for thread in holders:
        thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while requests.get(handle.url + "/_sandbox/faults", timeout=TIMEOUT_S).json()["in_flight"] < 4:
        assert time.monotonic() < deadline, "the four calls never filled the slots"
        time.sleep(0.02)

    refused = [call(requests.Session(), handle.url) for _ in range(3)]
    _post(handle.url + "/_sandbox/release", {})
    for thread in holders:
        thread.join()
    after = call(requests.Session(), handle.url)

    assert [r.status_code for r in refused] == [429] * 3
    assert all(r.headers["Retry-After"] == "2" for r in refused)
    assert [r.status_code for r in held] == [200] * 4 and after.status_code == 200
    assert _state(handle.url)["injected"] == {"429_busy": 3, "stall": 4}


def test_state_lists_config_and_counts_and_reset_keeps_knobs_unless_asked(sandbox: tuple[ServerHandle, Call]) -> None:
    handle, call = sandbox
    _post(handle.url + "/_sandbox/config", {"latency_ms": 5})
    assert call(requests.Session(), handle.url).status_code == 200

    before = _state(handle.url)
    kept = _post(handle.url + "/_sandbox/reset", None)
    after = _state(handle.url)
    restored = _post(handle.url + "/_sandbox/reset", {"reset_config": True})

    assert before["config"]["latency_ms"] == 5 and sum(before["request_counts"].values()) == 1
    assert kept["config"]["latency_ms"] == 5 and after["request_counts"] == {}
    assert restored["config"]["latency_ms"] == 0


# --- the state class on its own, and a new sandbox from the shared parts ---------------------------------


def test_erp_state_rules_work_without_http() -> None:
    config = ErpSandboxConfig(invoice_delay_s=0)
    state = ErpState(lambda: config, supplier_gstin="29ABCDE1234F1Z5", buyer_gstin="27AABCR1718E1ZY", seed=0)
    order = {
        "orderCode": "FN6018822001", "poNumber": "4042640641", "buyerCode": "AJIO-RRL",
        "lines": [{"sku": "460491724004", "quantity": 2, "unitPrice": 560}], "totalAmount": 1120,
    }

    booked, created = state.book_sales_order("create:FN6018822001", order, "http://erp.test")
    replayed, created_again = state.book_sales_order("create:FN6018822001", order, "http://erp.test")
    state.tick()

    assert (created, created_again) == (True, False) and replayed == booked
    [invoice] = state.invoices.values()
    assert invoice["orderCode"] == "FN6018822001" and invoice["totalValue"] == 1120.0
    assert state.order_view(booked["salesOrderId"])["status"] == "INVOICED"
    with pytest.raises(ApiError) as conflict:
        state.book_sales_order("create:FN6018822001", {**order, "poNumber": "other"}, "http://erp.test")
    assert (conflict.value.status, conflict.value.code) == (409, "IDEMPOTENCY_CONFLICT")


class _NotesState(SandboxState[FaultConfig]):
    def clear(self) -> None:
        self.notes: list[str] = []

    def documents(self) -> dict[str, Any]:
        return {"notes": list(self.notes)}


def test_a_new_sandbox_needs_only_its_state_and_router() -> None:
    faults = FaultInjector(FaultConfig(), lambda status, code, message, _d: {"error": code, "message": message})
    state = _NotesState(lambda: faults.config)
    router = APIRouter()

    @router.post("/notes")
    async def add_note(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        with state.lock:
            state.notes.append(str(body["text"]))
            return {"count": len(state.notes)}

    with serve_in_thread(sandbox_app("Notes sandbox", faults, state, router)) as handle:
        added = requests.post(handle.url + "/notes", json={"text": "hello"}, timeout=TIMEOUT_S)
        faulted = requests.post(handle.url + "/notes", json={"text": "lost"}, headers={"X-Sandbox-Fail": "503"},
                                timeout=TIMEOUT_S)
        state_before = _state(handle.url)
        _post(handle.url + "/_sandbox/reset", None)
        state_after = _state(handle.url)

    assert added.json() == {"count": 1}
    assert faulted.status_code == 503 and faulted.json()["error"] == "SERVICE_UNAVAILABLE"
    assert state_before["notes"] == ["hello"] and state_before["injected"] == {"503": 1}
    assert state_after["notes"] == [] and state_after["request_counts"] == {}
