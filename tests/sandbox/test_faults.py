"""Fault injection shared by both sandboxes: scripted failures, rates, timeouts after the work, concurrency cap."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

INVOICES = "/api/v1/e-invoices"
ORDER = {
    "orderCode": "FN6018822001",
    "poNumber": "4042640641",
    "buyerCode": "AJIO-RRL",
    "lines": [{"sku": "460491724004", "quantity": 1, "unitPrice": 1120}],
    "totalAmount": 1120,
}


def test_fail_next_fails_one_call_each_in_order(erp: Any) -> None:
    erp.configure(fail_next=[503, 429, 500])

    responses = [erp.get(INVOICES) for _ in range(4)]

    assert [r.status_code for r in responses] == [503, 429, 500, 200]
    codes = [r.json()["error"]["code"] for r in responses[:3]]
    assert codes == ["SERVICE_UNAVAILABLE", "TOO_MANY_REQUESTS", "INTERNAL_ERROR"]
    assert responses[0].headers["Retry-After"] == "1" and responses[1].headers["Retry-After"] == "1"


def test_injected_failure_happens_before_any_work(erp: Any) -> None:
    response = erp.post("/api/v1/sales-orders", ORDER, key="create:FN6018822001", headers={"X-Sandbox-Fail": "503"})

    assert response.status_code == 503
    state = erp.state()
    assert state["sales_orders"] == []
    assert state["rejected"] == [
        {"endpoint": "POST /api/v1/sales-orders", "status": 503, "code": "SERVICE_UNAVAILABLE"}
    ]
    assert state["request_counts"] == {"POST /api/v1/sales-orders": 1}


def test_timed_out_booking_was_done_and_its_retry_is_a_replay(erp: Any) -> None:
    erp.configure(fail_next=["timeout"], timeout_s=0.6)

    with pytest.raises(requests.exceptions.ReadTimeout):
        erp.post("/api/v1/sales-orders", ORDER, key="create:FN6018822001", timeout=0.2)
    retry = erp.post("/api/v1/sales-orders", ORDER, key="create:FN6018822001")

    assert retry.status_code == 200
    assert retry.json()["salesOrderId"] == "SO-000001"
    state = erp.state()
    assert len(state["sales_orders"]) == 1
    assert state["duplicates"] == {"sales_order": 1}


def test_timeout_rate_answers_late_but_successfully(erp: Any) -> None:
    erp.configure(timeout_rate=1.0, timeout_s=0.3)

    started = time.monotonic()
    response = erp.get(INVOICES)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_latency_delays_every_api_call(erp: Any) -> None:
    erp.configure(latency_ms=200)

    started = time.monotonic()
    erp.get(INVOICES)

    assert time.monotonic() - started >= 0.2


def test_error_rate_gives_the_same_failures_for_the_same_seed(erp: Any) -> None:
    erp.configure(error_rate=0.5, seed=7)
    first = [erp.get(INVOICES).status_code for _ in range(20)]
    requests.post(erp.url + "/_sandbox/reset", timeout=5).raise_for_status()  # keeps config, re-seeds
    second = [erp.get(INVOICES).status_code for _ in range(20)]

    assert first == second
    assert set(first) == {200, 503}


def test_calls_beyond_max_concurrency_get_429_with_retry_after(erp: Any) -> None:
    erp.configure(max_concurrency=1, latency_ms=300)
    responses: list[requests.Response] = []

    def call() -> None:
        responses.append(requests.get(erp.url + INVOICES, headers=dict(erp.session.headers), timeout=5))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()

    assert sorted(r.status_code for r in responses) == [200, 429]
    [busy] = [r for r in responses if r.status_code == 429]
    assert busy.headers["Retry-After"] == "1"


def test_sandbox_controls_are_never_faulted(erp: Any) -> None:
    erp.configure(fail_next=[503], error_rate=1.0)

    assert erp.state()["config"]["fail_next"] == [503]


def test_unknown_fail_header_value_is_refused(erp: Any) -> None:
    response = erp.get(INVOICES, headers={"X-Sandbox-Fail": "418"})

    assert response.status_code == 400
    assert "X-Sandbox-Fail" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "knobs",
    [{"error_rate": 2}, {"fail_next": [418]}, {"max_concurrency": 0}, {"no_such_knob": 1}],
    ids=["rate-above-one", "unknown-fail-mode", "zero-concurrency", "unknown-knob"],
)
def test_invalid_knobs_are_refused_and_config_is_unchanged(erp: Any, knobs: dict[str, Any]) -> None:
    before = erp.state()["config"]

    response = requests.post(erp.url + "/_sandbox/config", json=knobs, timeout=5)

    assert response.status_code == 422
    assert erp.state()["config"] == before


def test_omni_injects_the_same_faults_in_increffs_error_shape(omni: Any) -> None:
    omni.configure(fail_next=[503])

    scripted = omni.post("/ajio-vms/b2bInvoice/posting", {})
    forced = omni.post("/ajio-vms/b2bInvoice/posting", {}, headers={"X-Sandbox-Fail": "500"})

    assert scripted.status_code == 503 and scripted.json()["code"] == "SERVICE_UNAVAILABLE"
    assert forced.status_code == 500
    body = forced.json()
    assert (body["code"], body["description"]) == ("INTERNAL_ERROR", None) and body["message"]
    assert omni.state()["invoices"] == []
