"""Play Increff's scheduler: generate realistic Ajio ``OUTWARD_ORDER_CREATE`` postings and push them to an inbox."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests

from omni_erp.sandbox.catalogue import AJIO_DCS, CATALOGUE, DESTINATIONS
from omni_erp.timeutil import IST, now, parse_datetime, to_omni

log = logging.getLogger(__name__)

DEFAULT_START = datetime(2026, 11, 20, 5, 0, tzinfo=IST)
MAX_BACKOFF_S = 30.0


def generate_orders(
    count: int,
    *,
    seed: int = 0,
    first_message_id: int = 900001,
    missing_po_rate: float = 0.0,
    fully_cancelled_rate: float = 0.0,
    partially_cancelled_rate: float = 0.1,
    start: datetime = DEFAULT_START,
) -> list[dict[str, Any]]:
    """Ajio ``OUTWARD_ORDER_CREATE`` postings in the shape of ``samples/outward_order_create.json``.

    The same arguments always give the same postings. Each rate is the share of orders (rounded to whole
    orders) that get that treatment; fully and partially cancelled orders are disjoint.

    :param count: number of postings.
    :param seed: seed of everything random: order codes, items, quantities, destinations.
    :param first_message_id: ``messageId`` of the first posting; the rest follow consecutively.
    :param missing_po_rate: share of orders without the Ajio PO (``orderCustomAttributes.attribute1``).
    :param fully_cancelled_rate: share of orders whose every unit is cancelled.
    :param partially_cancelled_rate: share of orders with some, but not all, units cancelled.
    :param start: order time of the first order; later orders follow a few minutes apart.
    """
    for name, rate in (
        ("missing_po_rate", missing_po_rate),
        ("fully_cancelled_rate", fully_cancelled_rate),
        ("partially_cancelled_rate", partially_cancelled_rate),
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {rate}")
    if fully_cancelled_rate + partially_cancelled_rate > 1.0:
        raise ValueError("fully_cancelled_rate + partially_cancelled_rate must not exceed 1")
    rng = random.Random(seed)
    no_po = set(rng.sample(range(count), round(count * missing_po_rate)))
    shuffled = rng.sample(range(count), count)
    n_full = round(count * fully_cancelled_rate)
    fully = set(shuffled[:n_full])
    partially = set(shuffled[n_full : n_full + round(count * partially_cancelled_rate)])

    postings: list[dict[str, Any]] = []
    order_codes: set[str] = set()
    po_numbers: set[str] = set()
    for i in range(count):
        order_code = _unique(order_codes, lambda: f"FN{rng.randrange(10**9, 10**10)}")
        po_number = _unique(po_numbers, lambda: f"40426{rng.randrange(10**5):05d}")
        order_time = start + timedelta(minutes=7 * i + rng.randrange(7))
        posting = _posting(rng, first_message_id + i, order_code, po_number, order_time)
        if i in fully:
            for item in posting["orderItems"]:
                item["cancelledQuantity"] = item["orderedQuantity"]
        elif i in partially:
            _cancel_some(rng, posting["orderItems"])
        if i in no_po:
            del posting["orderCustomAttributes"]["attribute1"]
        postings.append(posting)
    return postings


def _unique(seen: set[str], make: Callable[[], str]) -> str:
    value = make()
    while value in seen:
        value = make()
    seen.add(value)
    return value


def _posting(
    rng: random.Random, message_id: int, order_code: str, po_number: str, order_time: datetime
) -> dict[str, Any]:
    oms_order_id = rng.randrange(500_000, 999_999)
    state, pincode = rng.choice(DESTINATIONS)
    items = rng.sample(CATALOGUE, rng.choice((1, 1, 1, 2, 2, 3)))
    dispatch_by = (order_time + timedelta(days=1)).astimezone(IST).replace(hour=18, minute=0, second=0, microsecond=0)
    return {
        "messageId": message_id,
        "eventType": "OUTWARD_ORDER_CREATE",
        "eventTime": to_omni(order_time + timedelta(minutes=rng.randrange(20, 240))),
        "orderCode": order_code,
        "parentOrderCode": order_code,
        "omsOrderId": oms_order_id,
        "orderType": "SO",
        "orderTime": to_omni(order_time),
        "turnAroundTime": to_omni(dispatch_by),
        "channelName": "AJIO_VMS",
        "channelType": "MARKETPLACE",
        "partnerCode": "AJIO-RRL",
        "partnerLocationCode": rng.choice(AJIO_DCS),
        "locationCode": "WH-BLR-01",
        "paymentMethod": "NCOD",
        "isPriority": False,
        "isSplitRequired": "false",
        "shippingCharges": 0,
        "virtualSkuDefinitions": [],
        "bundledSkuDefinitions": [],
        "orderItems": [
            {
                "orderItemCode": f"{order_code}-{n}",
                "omsItemId": oms_order_id * 10 + n,
                "channelSkuCode": item.channel_sku_code,
                "barcode": item.barcode,
                "orderedQuantity": rng.choice((1, 1, 1, 2, 2, 3)),
                "cancelledQuantity": 0,
                "sellingPricePerUnit": item.price,
                "channelDiscount": 0,
                "sellerDiscount": 0,
                "giftChargePerUnit": 0,
                "shippingCharge": 0,
                "orderItemCustomAttributes": {},
            }
            for n, item in enumerate(items, start=1)
        ],
        "shipments": [],
        "orderCustomAttributes": {
            "attribute1": po_number,
            "attribute2": pincode,
            "attribute3": state,
            "currency": "INR",
            "channelMetadata": {},
        },
    }


def _cancel_some(rng: random.Random, items: list[dict[str, Any]]) -> None:
    """Cancel at least one unit and leave at least one."""
    line = rng.choice(items)
    if len(items) == 1 and line["orderedQuantity"] == 1:
        line["orderedQuantity"] = 2  # a single unit cannot be partly cancelled
    if line["orderedQuantity"] > 1:
        line["cancelledQuantity"] = rng.randrange(1, line["orderedQuantity"])
    else:
        line["cancelledQuantity"] = 1  # another line keeps the order alive


@dataclass
class PushReport:
    """Outcome of :meth:`PostingPusher.push`."""

    sent: int = 0                 # postings handed to push()
    accepted: int = 0             # postings answered 200 (re-deliveries not counted)
    rejected: list[tuple[str, int | None, str]] = field(default_factory=list)  # (messageId, status, errorMessage)
    attempts: int = 0             # HTTP requests made, retries and re-deliveries included
    redelivered: int = 0          # accepted postings sent once more
    statuses: dict[str, int] = field(default_factory=dict)  # answers to every attempt: "200", "503", "no response"


class PostingPusher:
    """POST postings one by one to ``<inbox_url>/postings``, retrying like Increff's scheduler.

    5xx, 429, timeouts and connection errors are retried with exponential backoff up to ``max_attempts``;
    other 4xx are retried once and then recorded as rejected. A 200 whose body says ``"hasError": true``
    is rejected too (Increff's fallback convention, domain.md 4.4).

    :param inbox_url: base URL of the inbox endpoint.
    :param api_key: value of the static API key header Omni is configured to send.
    :param header: name of that header.
    :param max_attempts: attempts per posting, first one included.
    :param backoff_s: wait before the first retry; doubles each time, capped at 30 s.
    :param timeout_s: per-request timeout (Increff gives up after 45 s).
    :param redeliver_rate: share of accepted postings delivered a second time, as Increff sometimes does.
    :param seed: seed of the re-delivery choice.
    """

    def __init__(
        self,
        inbox_url: str,
        api_key: str,
        *,
        header: str = "X-Api-Key",
        max_attempts: int = 5,
        backoff_s: float = 0.2,
        timeout_s: float = 45,
        redeliver_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.inbox_url = inbox_url.rstrip("/")
        self.api_key = api_key
        self.header = header
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.redeliver_rate = redeliver_rate
        self.seed = seed

    def push(self, postings: Iterable[dict[str, Any]]) -> PushReport:
        """Deliver every posting, then re-deliver a share of the accepted ones (a failed re-delivery is rejected)."""
        report = PushReport()
        delivered: list[dict[str, Any]] = []
        with requests.Session() as session:
            session.headers[self.header] = self.api_key
            for posting in postings:
                report.sent += 1
                failure = self._deliver(session, posting, report)
                if failure is None:
                    report.accepted += 1
                    delivered.append(posting)
                else:
                    report.rejected.append(failure)
            rng = random.Random(self.seed)
            for posting in delivered:
                if rng.random() < self.redeliver_rate:
                    report.redelivered += 1
                    if (failure := self._deliver(session, posting, report)) is not None:
                        report.rejected.append(failure)
        log.info(
            "pushed %d postings: %d accepted, %d rejected, %d attempts, %d re-delivered",
            report.sent, report.accepted, len(report.rejected), report.attempts, report.redelivered,
        )
        return report

    def _deliver(
        self, session: requests.Session, posting: dict[str, Any], report: PushReport
    ) -> tuple[str, int | None, str] | None:
        message_id = str(posting.get("messageId"))
        client_errors = 0
        failure: tuple[str, int | None, str] = (message_id, None, "not attempted")
        for attempt in range(1, self.max_attempts + 1):
            report.attempts += 1
            try:
                response = session.post(f"{self.inbox_url}/postings", json=posting, timeout=self.timeout_s)
            except requests.RequestException as exc:
                report.statuses["no response"] = report.statuses.get("no response", 0) + 1
                failure = (message_id, None, f"{type(exc).__name__}: {exc}")
            else:
                status = response.status_code
                report.statuses[str(status)] = report.statuses.get(str(status), 0) + 1
                log.debug("posting %s attempt %d: HTTP %d", message_id, attempt, status)
                if status == 200:
                    error = _body_error(response)
                    return None if error is None else (message_id, 200, error)
                failure = (message_id, status, _error_message(response))
                if 400 <= status < 500 and status != 429:
                    client_errors += 1
                    if client_errors > 1:
                        return failure
            if attempt < self.max_attempts:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        return failure


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _body_error(response: requests.Response) -> str | None:
    body = _json_or_none(response)
    if isinstance(body, dict) and body.get("hasError") is True:
        return str(body.get("errorMessage") or "hasError without errorMessage")
    return None


def _error_message(response: requests.Response) -> str:
    body = _json_or_none(response)
    if isinstance(body, dict):
        for key in ("errorMessage", "message", "detail", "error"):
            if body.get(key):
                value = body[key]
                return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return response.text[:200] or f"HTTP {response.status_code}"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate postings and push them; prints the report as JSON; exit status 1 when any was rejected."""
    parser = argparse.ArgumentParser(prog="python -m omni_erp.sandbox.pusher", description=__doc__)
    parser.add_argument("--inbox-url", required=True, help="base URL of the inbox; postings go to <url>/postings")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--header", default="X-Api-Key", help="header that carries the API key")
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-message-id", type=int, default=900001)
    parser.add_argument("--start-time", help="ISO time of the first order (default: now)")
    parser.add_argument("--missing-po-rate", type=float, default=0.0)
    parser.add_argument("--fully-cancelled-rate", type=float, default=0.0)
    parser.add_argument("--partially-cancelled-rate", type=float, default=0.1)
    parser.add_argument("--redeliver-rate", type=float, default=0.0)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--backoff-s", type=float, default=0.2)
    parser.add_argument("--timeout-s", type=float, default=45.0)
    parser.add_argument("--dry-run", action="store_true", help="print the postings instead of pushing them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    postings = generate_orders(
        args.orders,
        seed=args.seed,
        first_message_id=args.first_message_id,
        missing_po_rate=args.missing_po_rate,
        fully_cancelled_rate=args.fully_cancelled_rate,
        partially_cancelled_rate=args.partially_cancelled_rate,
        start=parse_datetime(args.start_time) or now(),
    )
    if args.dry_run:
        print(json.dumps(postings, indent=2))
        return 0
    pusher = PostingPusher(
        args.inbox_url,
        args.api_key,
        header=args.header,
        max_attempts=args.max_attempts,
        backoff_s=args.backoff_s,
        timeout_s=args.timeout_s,
        redeliver_rate=args.redeliver_rate,
        seed=args.seed,
    )
    report = pusher.push(postings)
    print(json.dumps(asdict(report), indent=2))
    return 1 if report.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
