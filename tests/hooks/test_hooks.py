"""OmniHook and ErpHook against the sandboxes over real HTTP: success, retries, permanent errors, secrets."""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal
from pathlib import Path

import pytest

from omni_erp.exceptions import PayloadError, RemoteRejectedError, RemoteUnavailableError
from omni_erp.hooks.base import RetryPolicy
from omni_erp.hooks.erp import ErpHook
from omni_erp.hooks.omni import OmniHook
from omni_erp.models.erp import DocumentLine, SalesOrderRequest
from omni_erp.models.omni import B2BInvoice, CreditNote
from tests.conftest import SECRETS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _order(code: str = "FN0000000001", total: str = "2240.00") -> SalesOrderRequest:
    return SalesOrderRequest(
        orderCode=code,
        poNumber="4042640641",
        buyerCode="AJIO-RRL",
        lines=[DocumentLine(lineCode=f"{code}-1", sku="460491724004", quantity=2, unitPrice=Decimal("1120.00"))],
        totalAmount=Decimal(total),
    )


class Recorder(list):
    def __call__(self, attempt):
        self.append(attempt)

    @property
    def outcomes(self):
        return [a.outcome for a in self]


def test_erp_books_once_and_a_replay_returns_the_same_order(erp):
    hook = ErpHook()
    first = hook.create_sales_order(_order(), idempotency_key="create:FN0000000001")
    again = hook.create_sales_order(_order(), idempotency_key="create:FN0000000001")
    assert not first.replayed and again.replayed
    assert again.document.sales_order_id == first.document.sales_order_id
    state = erp.state()
    assert len(state["sales_orders"]) == 1
    assert state["duplicates"]["sales_order"] == 1


def test_erp_5xx_is_retried_until_success(erp):
    erp.configure(fail_next=[503, 500])
    attempts = Recorder()
    booking = ErpHook(on_attempt=attempts).create_sales_order(_order(), idempotency_key="create:FN0000000001")
    assert booking.document.status == "BOOKED"
    assert attempts.outcomes == ["retry", "retry", "ok"]
    assert [a.status_code for a in attempts] == [503, 500, 201]
    assert all(a.idempotency_key == "create:FN0000000001" for a in attempts)


def test_erp_timeout_after_commit_is_retried_and_books_only_once(erp):
    # The sandbox books the order, then answers too late: the hook times out and retries with the same key.
    # The late answer comes well after the client's read timeout, which leaves a loaded machine room to replay.
    erp.configure(fail_next=["timeout"], timeout_s=4.0)
    attempts = Recorder()
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, read_timeout_s=1.5)
    booking = ErpHook(retry_policy=policy, on_attempt=attempts).create_sales_order(
        _order(), idempotency_key="create:FN0000000001"
    )
    assert attempts.outcomes == ["retry", "ok"]
    assert attempts[0].status_code is None
    assert booking.replayed
    assert len(erp.state()["sales_orders"]) == 1


def test_erp_429_honours_retry_after(erp):
    erp.configure(fail_next=[429])
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=5)
    started = time.monotonic()
    ErpHook(retry_policy=policy).create_sales_order(_order(), idempotency_key="create:FN0000000001")
    assert time.monotonic() - started >= 0.9  # the sandbox asks for Retry-After: 1


def test_erp_4xx_is_permanent_and_carries_the_server_message(erp):
    attempts = Recorder()
    with pytest.raises(RemoteRejectedError) as err:
        ErpHook(on_attempt=attempts).create_sales_order(_order(total="9999.00"), idempotency_key="create:FN0000000001")
    assert err.value.status == 422 and err.value.code == "VALIDATION_FAILED"
    assert "totalAmount" in err.value.message
    assert attempts.outcomes == ["rejected"]
    assert erp.state()["sales_orders"] == []


def test_erp_down_raises_unavailable_after_the_last_attempt(erp):
    erp.configure(error_rate=1.0)
    attempts = Recorder()
    with pytest.raises(RemoteUnavailableError, match="after 4 attempts"):
        ErpHook(on_attempt=attempts).create_sales_order(_order(), idempotency_key="create:FN0000000001")
    assert attempts.outcomes == ["retry", "retry", "retry", "unavailable"]


def test_nothing_listening_is_unavailable(monkeypatch, fast_retries):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DOWN", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{port}", "password": "x"}))
    with pytest.raises(RemoteUnavailableError):
        ErpHook("erp_down").einvoices_since(0)


def test_erp_wrong_token_is_rejected_not_retried(erp, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ERP_BAD", json.dumps({"conn_type": "http", "host": erp.url, "password": "wrong"}))
    with pytest.raises(RemoteRejectedError) as err:
        ErpHook("erp_bad").einvoices_since(0)
    assert err.value.status == 401


def test_omni_accepts_a_valid_invoice_and_records_it(omni):
    invoice = B2BInvoice.model_validate(json.loads((FIXTURES / "b2b_invoice_partial.json").read_text()))
    OmniHook().post_b2b_invoice(invoice)
    state = omni.state()
    assert [i["body"]["invoiceNumber"] for i in state["invoices"]] == ["RB2526/000812"]


def test_omni_bad_data_is_permanent_with_increffs_code_and_description(omni):
    body = json.loads((FIXTURES / "b2b_invoice_full.json").read_text())
    body["invoiceDate"] = "2026-11-20T11:00:00"  # no zone offset: Increff wants a ZonedDateTime
    invoice = B2BInvoice.model_validate(body)
    with pytest.raises(RemoteRejectedError) as err:
        OmniHook().post_b2b_invoice(invoice)
    assert err.value.status == 400 and err.value.code == "BAD_DATA"
    assert "invoiceDate" in err.value.message


def test_omni_500_then_success_uploads_once(omni):
    omni.configure(fail_next=[500])
    note = CreditNote.model_validate(json.loads((FIXTURES / "credit_note.json").read_text()))
    attempts = Recorder()
    OmniHook(on_attempt=attempts).post_credit_note(note)
    assert attempts.outcomes == ["retry", "ok"]
    assert len(omni.state()["credit_notes"]) == 1


def test_omni_sends_increff_headers_not_basic_auth(omni, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_OMNI_WRONG",
        json.dumps({"conn_type": "http", "host": omni.url, "login": "omni-test-user", "password": "wrong"}),
    )
    invoice = B2BInvoice.model_validate(json.loads((FIXTURES / "b2b_invoice_full.json").read_text()))
    with pytest.raises(RemoteRejectedError) as err:
        OmniHook("omni_wrong").post_b2b_invoice(invoice)
    assert err.value.status == 401
    OmniHook().post_b2b_invoice(invoice)  # the right headers pass


def test_secrets_never_reach_the_logs(erp, omni, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    erp.configure(fail_next=[503])
    ErpHook().create_sales_order(_order(), idempotency_key="create:FN0000000001")
    invoice = B2BInvoice.model_validate(json.loads((FIXTURES / "b2b_invoice_full.json").read_text()))
    OmniHook().post_b2b_invoice(invoice)
    with pytest.raises(RemoteRejectedError):
        ErpHook().create_sales_order(_order(code="FN0000000002", total="1.00"), idempotency_key="create:FN0000000002")
    # Airflow's task logging writes through structlog to stdout; stdlib records go to caplog: check both.
    out, err = capfd.readouterr()
    text = out + err + caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "create:FN0000000001" in text  # the business key is logged...
    for secret in SECRETS:
        assert secret not in text  # ...the credentials never are


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(base_delay_s=1, max_delay_s=4)
    assert 0.5 <= policy.backoff(1, None) <= 1
    assert 2 <= policy.backoff(3, None) <= 4
    assert 2 <= policy.backoff(10, None) <= 4
    assert policy.backoff(1, retry_after=3) == 3
    assert policy.backoff(1, retry_after=60) == 4


def test_a_header_value_no_http_request_can_carry_is_refused_before_any_call(erp):
    attempts = Recorder()
    with pytest.raises(PayloadError, match="Idempotency-Key"):
        ErpHook(on_attempt=attempts).create_sales_order(_order(), idempotency_key="create:FN1\r\nX-Injected: 1")
    with pytest.raises(PayloadError, match="Idempotency-Key"):
        ErpHook(on_attempt=attempts).create_sales_order(_order(), idempotency_key="create:FN\u202e1")
    assert attempts == [] and erp.state()["sales_orders"] == []


@pytest.mark.parametrize("prefix", ["../sales-orders/", "x/../"], ids=["dot-dot", "embedded-slash"])
def test_a_sales_order_id_is_one_path_segment_whatever_it_holds(erp, prefix):
    # Held: the sandbox would e-invoice the order 50 ms after booking, and this test asserts it is untouched.
    erp.configure(invoice_hold=["FN0000000001"])
    booked = ErpHook().create_sales_order(_order(), idempotency_key="create:FN0000000001").document
    with pytest.raises(RemoteRejectedError) as refused:
        ErpHook().cancel_sales_order(f"{prefix}{booked.sales_order_id}", idempotency_key="cancel:FN0000000001")
    assert refused.value.status == 404
    [order] = erp.state()["sales_orders"]
    assert order["status"] == "BOOKED"  # the crafted id could not reach another order's cancel endpoint
