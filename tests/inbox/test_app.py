"""The inbox app in-process: auth, validation, dedupe on messageId, dead letters and Increff's answers."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from omni_erp.inbox.app import MAX_BODY_BYTES
from omni_erp.ledger.engine import sqlite_url
from tests.inbox.conftest import API_KEY, Inbox, sample

INCREFF_OK = {"hasError": False}


def assert_increff_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"hasError", "errorMessage"}
    assert body["hasError"] is True
    for fragment in fragments:
        assert fragment in body["errorMessage"]


# --- storing and dedupe (both ledger backends) -----------------------------------------------------


def test_valid_posting_is_stored_pending_as_received(ledger_url, create_posting):
    inbox = Inbox(ledger_url)

    response = inbox.post(create_posting)

    assert response.status_code == 200
    assert response.json() == INCREFF_OK
    [row] = inbox.ledger.postings()
    assert (row["message_id"], row["event_type"], row["business_key"], row["order_code"], row["state"]) == (
        "900001",
        "OUTWARD_ORDER_CREATE",
        "FN6018822001",
        "FN6018822001",
        "pending",
    )
    # The raw posting, not the model dump: fields the model ignores (omsOrderId) are kept for the DAGs.
    assert json.loads(row["payload"]) == create_posting


def test_same_posting_twice_is_stored_once_and_both_answered_200(ledger_url, create_posting):
    inbox = Inbox(ledger_url)
    reordered = dict(reversed(list(create_posting.items())))  # same content, other key order

    first, second = inbox.post(create_posting), inbox.post(reordered)

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == INCREFF_OK
    assert len(inbox.ledger.postings()) == 1


def test_same_message_id_with_other_content_is_409_and_original_kept(ledger_url, create_posting):
    inbox = Inbox(ledger_url)
    inbox.post(create_posting)
    changed = {**create_posting, "orderCode": "FN-OTHER"}

    response = inbox.post(changed)

    assert_increff_error(response, 409, "messageId 900001 was already received with different content")
    [row] = inbox.ledger.postings()
    assert json.loads(row["payload"])["orderCode"] == "FN6018822001"
    [dead] = inbox.ledger.dead_letters("inbox")
    assert dead["message_id"] == "900001" and "different content" in dead["reason"]


# --- event types and shapes --------------------------------------------------------------------


def test_ignored_event_type_is_stored_as_ignored(inbox_app, create_posting):
    posting = {**create_posting, "messageId": 900002, "eventType": "OUTWARD_ORDER_SHIPMENT_DISPATCH"}

    response = inbox_app.post(posting)

    assert response.json() == INCREFF_OK
    [row] = inbox_app.ledger.postings()
    assert (row["event_type"], row["state"]) == ("OUTWARD_ORDER_SHIPMENT_DISPATCH", "ignored")


def test_return_posting_is_stored_under_its_return_order_code(inbox_app):
    response = inbox_app.post(sample("return_order_posting.json"))

    assert response.json() == INCREFF_OK
    [row] = inbox_app.ledger.postings()
    assert (row["event_type"], row["business_key"], row["order_code"], row["state"]) == (
        "RETURN_ORDER_COMPLETE",
        "RTN-88123401",
        "FN6018822003",
        "pending",
    )


def test_return_posting_without_event_type_is_recognised_by_return_order_code(inbox_app):
    posting = sample("return_order_posting.json")
    del posting["eventType"]

    response = inbox_app.post(posting)

    assert response.json() == INCREFF_OK
    [row] = inbox_app.ledger.postings()
    assert (row["event_type"], row["business_key"], row["state"]) == ("RETURN_ORDER_COMPLETE", "RTN-88123401", "pending")


def test_lenient_posting_with_unknown_fields_nulls_and_string_booleans_is_accepted(inbox_app, create_posting):
    posting = {**create_posting, "isPriority": "true", "shipments": None, "newFieldIncreffAddedLater": {"x": 1}}

    response = inbox_app.post(posting)

    assert response.json() == INCREFF_OK
    assert json.loads(inbox_app.ledger.postings()[0]["payload"])["newFieldIncreffAddedLater"] == {"x": 1}


# --- rejections ------------------------------------------------------------------------------------


def _without_message_id(posting: dict) -> str:
    return json.dumps({k: v for k, v in posting.items() if k != "messageId"})


def _with_quantity_two(posting: dict) -> str:
    posting["orderItems"][0]["orderedQuantity"] = "two"
    return json.dumps(posting)


def _with_long_order_code(posting: dict) -> str:
    return json.dumps({**posting, "orderCode": "X" * 256})


@pytest.mark.parametrize(
    ("make_body", "expected_message", "message_id"),
    [
        (lambda p: json.dumps(p)[:-5], "malformed JSON", None),
        (lambda p: json.dumps([p]), "must be a JSON object", None),
        (_without_message_id, "messageId: Field required", None),
        (_with_quantity_two, "orderItems.0.orderedQuantity: must be a whole number (JSON integer), not a string", "900001"),
        (_with_long_order_code, "orderCode: String should have at most 255 characters", "900001"),
    ],
    ids=["malformed-json", "not-an-object", "missing-message-id", "quantity-not-a-number", "string-over-255"],
)
def test_invalid_posting_is_400_and_dead_lettered(inbox_app, create_posting, make_body, expected_message, message_id):
    body = make_body(create_posting)

    response = inbox_app.post(body)

    assert_increff_error(response, 400, expected_message)
    assert inbox_app.ledger.postings() == []
    [dead] = inbox_app.ledger.dead_letters("inbox")
    assert expected_message in dead["reason"]
    assert dead["message_id"] == message_id
    assert dead["payload"] == body


def test_body_over_one_mib_is_413_and_dead_lettered_truncated(inbox_app, create_posting):
    body = json.dumps({**create_posting, "padding": "x" * MAX_BODY_BYTES})

    # Streamed without Content-Length, so the inbox has to read it to find out (a declared length is refused unread).
    response = inbox_app.client.post(
        "/postings", content=iter([body.encode()]), headers={"Content-Type": "application/json", "X-Api-Key": API_KEY}
    )

    assert_increff_error(response, 413, "larger than")
    assert inbox_app.ledger.postings() == []
    [dead] = inbox_app.ledger.dead_letters("inbox")
    assert body.startswith(dead["payload"]) and len(dead["payload"]) < 25_000


@pytest.mark.parametrize("key", [None, "wrong-key", ""], ids=["no-key", "wrong-key", "empty-key"])
def test_unauthenticated_posting_is_401_and_nothing_is_stored(inbox_app, create_posting, key):
    response = inbox_app.post(create_posting, key=key)

    assert_increff_error(response, 401, "X-Api-Key")
    assert inbox_app.ledger.postings() == []
    assert inbox_app.ledger.dead_letters() == []


def test_key_callable_is_read_per_request_so_rotation_needs_no_restart(sqlite_ledger_url, create_posting):
    current = {"key": "old-key"}
    inbox = Inbox(sqlite_ledger_url, api_key=lambda: current["key"])
    assert inbox.post(create_posting, key="old-key").status_code == 200

    current["key"] = "new-key"

    assert inbox.post(create_posting, key="old-key").status_code == 401
    assert inbox.post(create_posting, key="new-key").status_code == 200


def test_no_key_configured_refuses_postings_with_503(sqlite_ledger_url, create_posting):
    inbox = Inbox(sqlite_ledger_url, api_key=lambda: None)

    response = inbox.post(create_posting, key="anything")

    assert_increff_error(response, 503, "not configured")
    assert inbox.ledger.postings() == []


def test_unknown_path_and_wrong_method_answer_in_increff_shape(inbox_app):
    assert_increff_error(inbox_app.client.get("/nope"), 404, "Not Found")
    assert_increff_error(inbox_app.client.put("/postings"), 405, "Method Not Allowed")  # GET is Get Credential


@pytest.mark.postgres
def test_value_postgres_cannot_store_is_400_not_an_endless_503(pg_ledger_url, create_posting):
    inbox = Inbox(pg_ledger_url)

    response = inbox.post({**create_posting, "orderCode": "FN\u0000601"})

    assert_increff_error(response, 400, "orderCode", "cannot be stored")
    assert inbox.ledger.postings() == []


# --- ledger availability ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unwritable_sqlite(tmp_path) -> str:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the ledger's directory should be")
    return sqlite_url(blocker / "ledger.sqlite")


@pytest.mark.parametrize(
    "make_url",
    [_unwritable_sqlite, lambda _tmp: f"postgresql+psycopg://omni@127.0.0.1:{_closed_port()}/omni?connect_timeout=2"],
    ids=["sqlite-path-unusable", "postgres-not-listening"],
)
def test_ledger_unavailable_is_503_so_omni_retries(tmp_path, create_posting, make_url):
    inbox = Inbox(make_url(tmp_path))

    response = inbox.post(create_posting)

    assert_increff_error(response, 503, "could not store the posting; retry")
    assert_increff_error(inbox.client.get("/health", headers={"X-Api-Key": API_KEY}), 503, "ledger unavailable")


def test_ledger_outage_is_not_cached_and_the_retry_is_stored(tmp_path, create_posting):
    good_url = sqlite_url(tmp_path / "ledger.sqlite")
    urls = iter([_unwritable_sqlite(tmp_path), good_url])
    inbox = Inbox(lambda: next(urls))

    assert inbox.post(create_posting).status_code == 503
    retry = inbox.post(create_posting)

    assert retry.json() == INCREFF_OK
    assert len(Inbox(good_url).ledger.postings()) == 1


def test_health_without_a_key_is_liveness_only_and_with_the_key_names_the_ledger(inbox_app):
    public = inbox_app.client.get("/health")
    detailed = inbox_app.client.get("/health", headers={"X-Api-Key": API_KEY})

    assert public.status_code == 200 and public.json() == {"status": "ok"}
    assert detailed.status_code == 200 and detailed.json()["ledger"]["backend"] == "sqlite"


# --- logging -------------------------------------------------------------------------------------


def test_one_line_per_posting_refusals_at_warning_and_the_key_never_logged_or_echoed(inbox_app, create_posting, caplog):
    caplog.set_level(logging.DEBUG)

    responses = [
        inbox_app.post(create_posting),
        inbox_app.post(create_posting, key=API_KEY + "x"),
        inbox_app.post("{broken"),
    ]

    records = [r for r in caplog.records if r.name == "omni_erp.inbox.app" and "inbox posting" in r.getMessage()]
    lines = [r.getMessage() for r in records]
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, logging.WARNING]
    assert "messageId=900001" in lines[0] and "businessKey=FN6018822001" in lines[0] and "outcome=stored" in lines[0]
    assert "outcome=unauthorized" in lines[1] and "outcome=rejected" in lines[2]
    assert all("duration_ms=" in line for line in lines)
    assert API_KEY not in caplog.text
    assert all(API_KEY not in r.text for r in responses)
    assert "460491724004" not in caplog.text  # payload contents (SKUs) stay out of the log
