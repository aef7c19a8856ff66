"""Generated Ajio postings look like Omni's, and the pusher retries and re-delivers like Increff's scheduler."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from omni_erp.models.omni import OutwardOrderPosting
from omni_erp.sandbox import pusher
from omni_erp.sandbox.catalogue import ean13
from omni_erp.sandbox.pusher import PostingPusher, generate_orders
from omni_erp.sandbox.serve import serve_in_thread

# Keys of samples/outward_order_create.json, in order.
SAMPLE_KEYS = [
    "messageId", "eventType", "eventTime", "orderCode", "parentOrderCode", "omsOrderId", "orderType", "orderTime",
    "turnAroundTime", "channelName", "channelType", "partnerCode", "partnerLocationCode", "locationCode",
    "paymentMethod", "isPriority", "isSplitRequired", "shippingCharges", "virtualSkuDefinitions",
    "bundledSkuDefinitions", "orderItems", "shipments", "orderCustomAttributes",
]
SAMPLE_ITEM_KEYS = [
    "orderItemCode", "omsItemId", "channelSkuCode", "barcode", "orderedQuantity", "cancelledQuantity",
    "sellingPricePerUnit", "channelDiscount", "sellerDiscount", "giftChargePerUnit", "shippingCharge",
    "orderItemCustomAttributes",
]
API_KEY = "inbox-test-key"


class Inbox:
    """A tiny receiving endpoint that answers from a script, then 200."""

    def __init__(self, script: Sequence[tuple[int, dict[str, Any] | None]]) -> None:
        self.script = list(script)
        self.received: list[dict[str, Any]] = []
        self.api_keys: list[str | None] = []
        self.app = FastAPI()
        self.app.post("/inbox/postings")(self._receive)

    async def _receive(self, request: Request) -> Response:
        self.received.append(await request.json())
        self.api_keys.append(request.headers.get("X-Api-Key"))
        status, body = self.script.pop(0) if self.script else (200, None)
        return Response(status_code=status) if body is None else JSONResponse(body, status_code=status)


@pytest.fixture
def serve_inbox() -> Iterator[Any]:
    handles = []

    def start(script: Sequence[tuple[int, dict[str, Any] | None]] = ()) -> tuple[Inbox, str]:
        inbox = Inbox(list(script))
        handles.append(serve_in_thread(inbox.app))
        return inbox, handles[-1].url + "/inbox"

    yield start
    for handle in handles:
        handle.stop()


def make_pusher(url: str, **kwargs: Any) -> PostingPusher:
    return PostingPusher(url, API_KEY, backoff_s=0.01, timeout_s=5, **kwargs)


# --- generate_orders ---------------------------------------------------------------------------


def test_same_seed_gives_the_same_postings_and_another_seed_does_not() -> None:
    assert generate_orders(5, seed=3) == generate_orders(5, seed=3)
    assert generate_orders(5, seed=3) != generate_orders(5, seed=4)


def test_postings_have_the_shape_of_omnis_create_posting() -> None:
    postings = generate_orders(30, seed=1)

    assert [p["messageId"] for p in postings] == list(range(900001, 900031))
    assert len({p["orderCode"] for p in postings}) == 30
    for posting in postings:
        assert list(posting) == SAMPLE_KEYS
        assert all(list(item) == SAMPLE_ITEM_KEYS for item in posting["orderItems"])
        parsed = OutwardOrderPosting.model_validate(posting)
        assert re.fullmatch(r"FN\d{10}", parsed.order_code)
        assert (parsed.channel_name, parsed.partner_code, parsed.location_code) == ("AJIO_VMS", "AJIO-RRL", "WH-BLR-01")
        assert 1 <= len(parsed.order_items) <= 3
        for item in parsed.order_items:
            assert re.fullmatch(r"\d{12}", item.channel_sku_code)
            assert item.barcode == ean13(item.barcode[:12])
            assert 399 <= item.selling_price_per_unit <= 4999
        attributes = posting["orderCustomAttributes"]
        assert re.fullmatch(r"40426\d{5}", attributes["attribute1"])
        assert re.fullmatch(r"\d{6}", attributes["attribute2"])
        assert attributes["attribute3"].isupper()


def test_rates_give_that_share_of_orders_without_po_or_with_cancellations() -> None:
    postings = generate_orders(
        20, seed=5, missing_po_rate=0.25, fully_cancelled_rate=0.1, partially_cancelled_rate=0.2
    )

    def units(posting: dict[str, Any], field: str) -> int:
        return sum(item[field] for item in posting["orderItems"])

    without_po = [p for p in postings if "attribute1" not in p["orderCustomAttributes"]]
    fully = [p for p in postings if units(p, "cancelledQuantity") == units(p, "orderedQuantity")]
    partly = [p for p in postings if 0 < units(p, "cancelledQuantity") < units(p, "orderedQuantity")]
    assert (len(without_po), len(fully), len(partly)) == (5, 2, 4)


@pytest.mark.parametrize(
    "rates",
    [
        {"missing_po_rate": 1.5},
        {"partially_cancelled_rate": -0.1},
        {"fully_cancelled_rate": 0.6, "partially_cancelled_rate": 0.6},
    ],
    ids=["above-one", "negative", "cancellations-above-one"],
)
def test_impossible_rates_are_refused(rates: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        generate_orders(10, **rates)


# --- PostingPusher -----------------------------------------------------------------------------


def test_pusher_retries_server_errors_until_delivered(serve_inbox: Any) -> None:
    inbox, url = serve_inbox([(503, None), (503, {"hasError": True, "errorMessage": "busy"})])
    [posting] = generate_orders(1)

    report = make_pusher(url).push([posting])

    assert (report.sent, report.accepted, report.attempts, report.rejected) == (1, 1, 3, [])
    assert inbox.received == [posting] * 3
    assert inbox.api_keys == [API_KEY] * 3


def test_pusher_rejects_a_client_error_after_one_retry(serve_inbox: Any) -> None:
    inbox, url = serve_inbox([(400, {"hasError": True, "errorMessage": "PO missing"})] * 2)
    [posting] = generate_orders(1)

    report = make_pusher(url).push([posting])

    assert report.accepted == 0 and report.attempts == 2
    assert report.rejected == [("900001", 400, "PO missing")]
    assert report.statuses == {"400": 2}


def test_pusher_treats_200_with_has_error_as_rejected(serve_inbox: Any) -> None:
    _, url = serve_inbox([(200, {"hasError": True, "errorMessage": "unknown SKU"})])

    report = make_pusher(url).push(generate_orders(1))

    assert report.rejected == [("900001", 200, "unknown SKU")] and report.attempts == 1


def test_pusher_gives_up_on_an_unreachable_inbox_after_max_attempts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: connections are refused

    report = make_pusher(f"http://127.0.0.1:{port}/inbox", max_attempts=3).push(generate_orders(1))

    assert report.attempts == 3 and report.statuses == {"no response": 3}
    [(message_id, status, message)] = report.rejected
    assert (message_id, status) == ("900001", None) and "ConnectionError" in message


def test_redelivery_sends_accepted_postings_a_second_time(serve_inbox: Any) -> None:
    inbox, url = serve_inbox()
    postings = generate_orders(3)

    report = make_pusher(url, redeliver_rate=1.0).push(postings)

    assert (report.accepted, report.redelivered, report.attempts) == (3, 3, 6)
    assert [p["messageId"] for p in inbox.received] == [900001, 900002, 900003] * 2


def test_cli_pushes_generated_orders_and_prints_the_report(
    serve_inbox: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, url = serve_inbox()

    exit_code = pusher.main(["--inbox-url", url, "--api-key", API_KEY, "--orders", "4", "--seed", "2"])

    assert exit_code == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 4
    assert [p["orderCode"] for p in inbox.received] == [p["orderCode"] for p in generate_orders(4, seed=2)]
