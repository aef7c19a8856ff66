"""Fault injection shared by both sandboxes: scripted failures, rates, timeouts after the work, concurrency cap."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.sandbox.faults import FaultConfig, FaultInjector

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


def test_latency_is_a_service_time_the_work_is_done_before_the_caller_hears_of_it(erp: Any) -> None:
    """The booking exists while its caller still waits, and the answer leaves latency_ms after the call arrived:
    a client that gives up (or dies) inside the service time leaves the ERP holding the order, as a real ERP does."""
    erp.configure(latency_ms=1500)
    answers: list[tuple[requests.Response, float]] = []

    def book() -> None:
        response = erp.post("/api/v1/sales-orders", ORDER, key="create:FN6018822001")
        answers.append((response, time.monotonic()))

    started = time.monotonic()
    caller = threading.Thread(target=book)
    caller.start()
    while not erp.state()["sales_orders"] and time.monotonic() < started + 10:
        time.sleep(0.02)
    seen_booked = time.monotonic()  # the state said "booked" before this moment
    caller.join(timeout=10)

    [(response, answered)] = answers
    assert response.status_code == 201
    assert seen_booked < answered  # booked before its caller heard of it
    assert answered - started >= 1.5


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


# --- chaos knobs: exact shares, 5xx variety, hangs, connection resets, stalls after the work ----------


def _booking(n: int) -> dict[str, Any]:
    return {**ORDER, "orderCode": f"FN60188230{n:02d}"}


@settings(max_examples=25, deadline=None)
@given(
    rates=st.lists(st.integers(0, 25), min_size=4, max_size=4),  # percent; never more than 100 together
    seed=st.integers(0, 2**16),
)
def test_fault_rates_are_exact_shares_of_one_draw(rates: list[int], seed: int) -> None:
    error, timeout, hang, reset = (r / 100 for r in rates)
    config = FaultConfig(error_rate=error, timeout_rate=timeout, hang_rate=hang, reset_rate=reset, seed=seed)
    injector = FaultInjector(config, lambda *a: {})
    calls = 4000

    for _ in range(calls):
        mode, _detail = injector._admit("GET /x", None)
        injector._in_flight -= 1

    injected = injector.fault_snapshot()["injected"]
    for key, rate in (("503", error), ("timeout", timeout), ("hang", hang), ("reset", reset)):
        assert abs(injected.get(key, 0) / calls - rate) < 0.035, (key, rate, injected)
    assert sum(injected.values()) <= calls


def test_rates_adding_up_to_more_than_one_are_refused(erp: Any) -> None:
    response = requests.post(erp.url + "/_sandbox/config", json={"error_rate": 0.6, "timeout_rate": 0.5}, timeout=5)

    assert response.status_code == 422
    assert "must not exceed 1" in response.json()["error"]["message"]


def test_error_statuses_spread_injected_5xx_and_are_counted(erp: Any) -> None:
    erp.configure(error_rate=1.0, error_statuses=[500, 502, 503, 504], retry_after_s=0, seed=5)

    statuses = [erp.get(INVOICES).status_code for _ in range(40)]

    assert set(statuses) == {500, 502, 503, 504}
    injected = erp.state()["injected"]
    assert {int(k): v for k, v in injected.items()} == {s: statuses.count(s) for s in set(statuses)}


def test_reset_drops_the_connection_before_or_after_the_work(erp: Any) -> None:
    erp.configure(reset_rate=1.0, seed=3)

    for n in range(8):
        with pytest.raises(requests.ConnectionError):
            erp.post("/api/v1/sales-orders", _booking(n), key=f"create:{n}")

    state = erp.state()
    after_work = state["injected"]["reset_after_work"]
    assert state["injected"]["reset"] == 8
    assert 0 < after_work < 8  # both kinds happen with this seed
    assert len(state["sales_orders"]) == after_work  # exactly the resets after the work left an order behind


def test_hang_answers_late_and_does_not_do_the_work(erp: Any) -> None:
    erp.configure(hang_rate=1.0, timeout_s=0.4)

    with pytest.raises(requests.exceptions.ReadTimeout):
        erp.post("/api/v1/sales-orders", _booking(1), key="create:1", timeout=0.1)
    late = erp.post("/api/v1/sales-orders", _booking(2), key="create:2", timeout=5)

    assert late.status_code == 504
    time.sleep(0.5)  # the first call's hang is over too
    state = erp.state()
    assert state["sales_orders"] == []
    assert state["injected"] == {"hang": 2}


def test_stall_holds_a_committed_call_and_shows_it_while_it_waits(erp: Any) -> None:
    erp.configure(stall_next=1, stall_endpoint="POST /api/v1/sales-orders", stall_s=1.0)
    answers: list[int] = []
    caller = threading.Thread(
        target=lambda: answers.append(erp.post("/api/v1/sales-orders", _booking(1), key="create:1").status_code)
    )

    caller.start()
    deadline = time.monotonic() + 3
    while not (faults := erp.get("/_sandbox/faults").json())["stalled"] and time.monotonic() < deadline:
        time.sleep(0.02)
    held_orders, answered_while_held = len(erp.state()["sales_orders"]), list(answers)
    caller.join()

    assert [s["idempotency_key"] for s in faults["stalled"]] == ["create:1"]
    assert held_orders == 1 and answered_while_held == []  # committed, not yet answered
    assert answers == [201]
    assert erp.get("/_sandbox/faults").json()["stalled"] == []
    assert erp.get(INVOICES).status_code == 200 and erp.state()["injected"] == {"stall": 1}  # armed once only


def test_release_lets_stalled_calls_answer_at_once(erp: Any) -> None:
    erp.configure(stall_next=1, stall_s=30.0)
    answers: list[float] = []
    started = time.monotonic()
    caller = threading.Thread(target=lambda: (erp.get(INVOICES), answers.append(time.monotonic() - started)))

    caller.start()
    while not erp.get("/_sandbox/faults").json()["stalled"]:
        time.sleep(0.02)
    released = requests.post(erp.url + "/_sandbox/release", timeout=5).json()
    caller.join(5)

    assert released == {"released": 1}
    assert answers and answers[0] < 5
    assert erp.get("/_sandbox/faults").json()["stalled"] == []
