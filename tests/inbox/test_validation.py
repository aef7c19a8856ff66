"""Inbox validation to Increff's documented types (issue 6): what real Increff postings may look like, and limits."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from omni_erp import settings
from omni_erp.inbox.app import MAX_JSON_DEPTH
from tests.inbox.conftest import API_KEY, Inbox, sample

OK = {"hasError": False}


def _create(**changes: Any) -> dict[str, Any]:
    posting = sample("outward_order_create.json")
    posting.update(changes)
    return posting


def _with_item(posting: dict[str, Any], **changes: Any) -> dict[str, Any]:
    posting = copy.deepcopy(posting)
    posting["orderItems"][0].update(changes)
    return posting


def _complete(**changes: Any) -> dict[str, Any]:
    posting = sample("outward_order_complete_partial.json")
    posting.update(changes)
    return posting


def _return(**changes: Any) -> dict[str, Any]:
    posting = sample("return_order_posting.json")
    posting.update(changes)
    return posting


def _nulls_for_every_optional_field() -> dict[str, Any]:
    posting = _create(
        eventTime=None, parentOrderCode=None, omsOrderId=None, orderType=None, orderTime=None, turnAroundTime=None,
        channelName=None, channelType=None, partnerCode=None, partnerLocationCode=None, locationCode=None,
        paymentMethod=None, isPriority=None, isSplitRequired=None, shippingCharges=None, virtualSkuDefinitions=None,
        bundledSkuDefinitions=None, shipments=None, orderCustomAttributes={"attribute1": "4042640641", "attribute2": None},
    )
    for item in posting["orderItems"]:
        item.update(omsItemId=None, barcode=None, cancelledQuantity=None, sellingPricePerUnit=None, channelDiscount=None)
    return posting


def _complete_with_nulls() -> dict[str, Any]:
    posting = _complete(isPriority=None)
    shipment = posting["shipments"][0]
    shipment.update(irn=None, qrCode=None, externalInvoiceId=None, externalInvoiceDate=None, omsShipmentId=None)
    shipment["shipmentItems"][0].update(taxItems=None, barcode=None, orderItemCode=None, sellingPricePerUnit=None)
    return posting


def _return_with_nulls() -> dict[str, Any]:
    posting = _return(eventType=None, returnOrderType=None, shipments=None)
    for item in posting["items"]:
        item.update(qcStatus=None, qcReason=None, isExcess=None, sellingPricePerUnit=None, imageUrls=None)
    return posting


GOOD = {
    "create-sample": (lambda: _create(), "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "cancel-sample": (lambda: sample("outward_order_cancel.json"), "900057", "OUTWARD_ORDER_CANCEL", "pending"),
    "complete-sample": (lambda: _complete(), "900311", "OUTWARD_ORDER_COMPLETE", "pending"),
    "return-sample": (lambda: _return(), "910004", "RETURN_ORDER_COMPLETE", "pending"),
    "is-priority-null": (lambda: _create(isPriority=None), "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "every-optional-field-null": (_nulls_for_every_optional_field, "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "complete-with-null-tax-items-and-irn": (_complete_with_nulls, "900311", "OUTWARD_ORDER_COMPLETE", "pending"),
    "return-with-nulls-and-null-event-type": (_return_with_nulls, "910004", "RETURN_ORDER_COMPLETE", "pending"),
    "string-booleans": (lambda: _create(isPriority="TRUE", isSplitRequired="false"), "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "message-id-as-digit-string": (lambda: _create(messageId="0900001"), "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "message-id-java-long-max": (lambda: _create(messageId=2**63 - 1), str(2**63 - 1), "OUTWARD_ORDER_CREATE", "pending"),
    "unicode-names-and-codes": (
        lambda: _with_item(_create(orderCode="पुणे-FN-😀", channelName="Café Crème"), channelSkuCode="東京-❤️"),
        "900001", "OUTWARD_ORDER_CREATE", "pending",
    ),
    "strings-of-255-characters": (lambda: _create(orderCode="F" * 255), "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "quantity-at-the-ceiling": (
        lambda: _with_item(_create(), orderedQuantity=settings.DEFAULT_MAX_LINE_QUANTITY), "900001", "OUTWARD_ORDER_CREATE", "pending"
    ),
    "zero-quantity-line": (lambda: _with_item(_create(), orderedQuantity=0), "900001", "OUTWARD_ORDER_CREATE", "pending"),
    "money-as-integer-and-4-decimals": (
        lambda: _with_item(_create(), sellingPricePerUnit=1120.1234), "900001", "OUTWARD_ORDER_CREATE", "pending"
    ),
    "money-with-double-noise": (
        lambda: _with_item(_create(), sellingPricePerUnit=1120.0000000000002), "900001", "OUTWARD_ORDER_CREATE", "pending"
    ),
    "cancel-without-order-items": (
        lambda: {**sample("outward_order_cancel.json"), "orderItems": None}, "900057", "OUTWARD_ORDER_CANCEL", "pending"
    ),
    "unknown-fields-kept": (lambda: _create(newFieldIncreffAddedLater={"x": [1, None]}), "900001", "OUTWARD_ORDER_CREATE", "pending"),
}
GOOD.update(
    {
        f"ignored-{event.lower()}": (
            (lambda event=event: _create(eventType=event, orderItems=None))
            if event.startswith("OUTWARD")
            else (lambda event=event: _return(eventType=event, items=None)),
            "900001" if event.startswith("OUTWARD") else "910004",
            event,
            "ignored",
        )
        for event in sorted(settings.IGNORED_EVENTS)
    }
)


@pytest.mark.parametrize(("make", "message_id", "event_type", "state"), list(GOOD.values()), ids=list(GOOD))
def test_real_increff_shapes_are_stored(inbox_app, make, message_id, event_type, state):
    posting = make()

    response = inbox_app.post(posting)

    assert (response.status_code, response.json()) == (200, OK)
    [row] = inbox_app.ledger.postings()
    assert (row["message_id"], row["event_type"], row["state"]) == (message_id, event_type, state)
    assert json.loads(row["payload"]) == posting  # stored as received, nulls and unknown fields included


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", 'application/json;charset="UTF-8"', "APPLICATION/JSON",
     "application/vnd.increff.posting+json", "application/json; charset=utf8; profile=x"],
)
def test_json_content_types_are_accepted(inbox_app, content_type):
    response = inbox_app.client.post(
        "/postings", content=json.dumps(_create()), headers={"Content-Type": content_type, "X-Api-Key": API_KEY}
    )

    assert (response.status_code, response.json()) == (200, OK)


def test_unknown_event_type_is_400_listing_the_known_ones_and_dead_lettered(inbox_app):
    response = inbox_app.post(_create(eventType="outward_order_create"))

    assert response.status_code == 400
    message = response.json()["errorMessage"]
    assert "eventType: unknown event type 'outward_order_create'" in message and "OUTWARD_ORDER_CREATE" in message
    assert inbox_app.ledger.postings() == []
    [dead] = inbox_app.ledger.dead_letters("inbox")
    assert dead["message_id"] == "900001" and "unknown event type" in dead["reason"]


@pytest.mark.parametrize(
    ("value", "named"),
    [("FN\u202e1008", "U+202E (RIGHT-TO-LEFT OVERRIDE)"), ("FN\u200b1", "U+200B (ZERO WIDTH SPACE)"), ("FN1\n", "U+000A")],
    ids=["rtl-override", "zero-width-space", "trailing-newline"],
)
def test_control_and_bidi_characters_in_a_code_are_refused_naming_field_and_character(inbox_app, value, named):
    response = inbox_app.post(_create(orderCode=value))

    assert response.status_code == 400
    assert response.json()["errorMessage"].startswith(f"orderCode: contains {named}")
    assert inbox_app.ledger.postings() == []


@pytest.mark.parametrize(
    ("posting", "message"),
    [
        (lambda: _create(orderCustomAttributes="PO 4042640641"), "orderCustomAttributes: must be a JSON object"),
        (lambda: _create(orderItems=["FN1"]), "orderItems.0: must be a JSON object"),
        (lambda: _create(orderCustomAttributes={"attribute1": 4042640641}), "orderCustomAttributes.attribute1: Input should be a valid string"),
        (lambda: _create(orderCustomAttributes={"currency": "INR\t"}), "orderCustomAttributes.currency: contains U+0009"),
    ],
    ids=["attributes-as-string", "item-as-string", "po-as-number", "tab-in-an-attribute"],
)
def test_a_malformed_nested_object_is_refused_naming_it_in_json_terms(inbox_app, posting, message):
    response = inbox_app.post(posting())

    assert response.status_code == 400
    assert response.json()["errorMessage"].startswith(message)
    assert inbox_app.ledger.postings() == []


def test_attributes_we_do_not_know_are_accepted_and_stored_as_sent(inbox_app):
    attributes = {"attribute1": "4042640641", "channelMetadata": {"slot": [1, None]}, "attribute2": None}

    assert inbox_app.post(_create(orderCustomAttributes=attributes)).json() == OK
    [row] = inbox_app.ledger.postings()
    assert json.loads(row["payload"])["orderCustomAttributes"] == attributes


def test_quantity_ceiling_is_read_from_the_environment_per_request(inbox_app, monkeypatch):
    posting = _with_item(_create(), orderedQuantity=6)
    monkeypatch.setenv(settings.MAX_LINE_QUANTITY_ENV, "5")

    refused = inbox_app.post(posting)
    monkeypatch.setenv(settings.MAX_LINE_QUANTITY_ENV, "6")
    accepted = inbox_app.post(posting)

    assert refused.status_code == 400
    assert refused.json()["errorMessage"] == "orderItems.0.orderedQuantity: must be between 0 and 5"
    assert (accepted.status_code, accepted.json()) == (200, OK)


def test_a_broken_quantity_setting_is_503_so_omni_retries_and_nothing_is_lost(inbox_app, monkeypatch):
    monkeypatch.setenv(settings.MAX_LINE_QUANTITY_ENV, "lots")

    response = inbox_app.post(_create())

    assert response.status_code == 503 and response.json()["hasError"] is True
    assert inbox_app.ledger.postings() == [] and inbox_app.ledger.dead_letters() == []
    monkeypatch.delenv(settings.MAX_LINE_QUANTITY_ENV)
    assert inbox_app.post(_create()).status_code == 200


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_json_depth_limit_is_exactly_32_levels(inbox_app):
    # The posting object is level 1, so an extra field may nest 31 more.
    at_limit = inbox_app.post(_create(extra=_nested(MAX_JSON_DEPTH - 1)))
    over = inbox_app.post(_create(messageId=900002, extra=_nested(MAX_JSON_DEPTH)))

    assert (at_limit.status_code, over.status_code) == (200, 413)
    assert over.json() == {"hasError": True, "errorMessage": f"posting nested deeper than {MAX_JSON_DEPTH} levels"}
    assert [row["message_id"] for row in inbox_app.ledger.postings()] == ["900001"]


def test_oversized_declared_length_is_refused_and_dead_lettered_without_the_body(inbox_app):
    body = json.dumps(_create(padding="x" * 2_000_000))

    response = inbox_app.post(body)

    assert response.status_code == 413 and "larger than" in response.json()["errorMessage"]
    assert inbox_app.ledger.postings() == []
    [dead] = inbox_app.ledger.dead_letters("inbox")
    assert dead["payload"] is None and "larger than" in dead["reason"]


@pytest.mark.postgres
def test_hostile_values_are_refused_alike_on_postgres(pg_ledger_url):
    inbox = Inbox(pg_ledger_url)
    hostile = [
        _create(shippingAddress={"line1": "a\u0000b"}),  # NUL in a field we ignore: PostgreSQL cannot store it
        _create(note="\udc00"),  # a lone surrogate is not UTF-8
        _create(orderCode="FN\u2066x\u2069"),
        _with_item(_create(), orderedQuantity=2**63),
    ]

    statuses = [inbox.post(json.dumps(posting)).status_code for posting in hostile]

    assert statuses == [400, 400, 400, 400]
    assert inbox.ledger.postings() == []
    assert inbox.post(_create()).status_code == 200
