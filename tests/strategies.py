"""Hypothesis strategies for Increff postings: valid ones of every event type, and mutations that break them.

Valid postings follow domain.md 3.1 and 3.4 and the samples in ``tests/fixtures``, with Increff's habits
mixed in: optional fields ``null`` or absent, string booleans, unknown extra fields, Unicode names.
``mutations(posting)`` turns one valid posting into a request the inbox must refuse (wrong types,
nulls and missing required fields, sizes, control and bidirectional characters, huge numbers,
booleans for numbers, unknown event types, nested garbage) and says which status it expects.

Use them through the real inbox (``tests/inbox/test_properties.py``) or any flow test that needs
postings the inbox accepts::

    @given(posting=valid_postings())
    def test_something(posting): ...
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from omni_erp import settings

CREATE, CANCEL, COMPLETE, RETURN = settings.EVENT_CREATE, settings.EVENT_CANCEL, settings.EVENT_COMPLETE, settings.EVENT_RETURN
JAVA_LONG_MAX = 2**63 - 1
MAX_TEXT = settings.MAX_STRING_LENGTH

# Characters a received string may not hold: controls, bidirectional overrides/isolates/marks, zero-width, BOM, separators.
FORBIDDEN_CHARACTERS = (
    [chr(c) for c in range(0x20)]
    + ["\x7f", "\x85", "\xad", "\u061c", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u2060", "\ufeff", "\U000e0001"]
)
# Valid beyond ASCII: Devanagari, accents, CJK, emoji (with a variation selector, which is not a format character).
UNICODE_SAMPLES = ["पुणे", "Café-Crème", "東京店", "😀", "❤️", "Zürich №5", "ਪੰਜਾਬ"]

_letters = st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"))


# Strategies are built once here: hypothesis labels each new strategy object, which is slow for lambdas.
_CODES = st.one_of(
    st.builds("{}{}".format, st.sampled_from(["FN", "SKU", "RTN", "L-", "4604"]), st.integers(0, 10**12)),
    st.text(_letters, min_size=1, max_size=40),
    st.sampled_from(UNICODE_SAMPLES),
)
_TEXTS = st.one_of(st.text(_letters, min_size=0, max_size=30), st.sampled_from(UNICODE_SAMPLES), st.just("x" * MAX_TEXT))
_NUMBERS = st.one_of(st.integers(1, 10**9), st.integers(1, JAVA_LONG_MAX), st.just(JAVA_LONG_MAX))
_MESSAGE_IDS = st.one_of(_NUMBERS, _NUMBERS.map(str))
_QUANTITIES = st.one_of(st.integers(0, 10), st.integers(0, settings.DEFAULT_MAX_LINE_QUANTITY))
_MONEY = st.one_of(st.integers(0, 10**6), st.builds(float.__truediv__, st.integers(0, 10**9).map(float), st.just(100.0)))
_TAX_ITEMS = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["IGST", "CGST", "SGST"]), "rate": _MONEY, "taxPerUnit": _MONEY, "taxTotal": _MONEY}),
    max_size=2,
)
_EXTRA_LEAVES = st.none() | st.booleans() | st.integers() | st.text(_letters, max_size=10)
_EXTRA_VALUES = st.recursive(_EXTRA_LEAVES, st.lists, max_leaves=5)
_RANDOM_TEXT = st.text(min_size=1, max_size=40)


def codes() -> st.SearchStrategy[str]:
    """Codes as Increff sends them: mostly ASCII like ``FN6018822001``, sometimes any printable Unicode."""
    return _CODES


def texts() -> st.SearchStrategy[str]:
    """Optional free text: anything printable, up to Increff's 255 characters (the limit included)."""
    return _TEXTS


def message_ids() -> st.SearchStrategy[int | str]:
    """Java Longs, now and then as a digit string (the inbox canonicalises it)."""
    return _MESSAGE_IDS


def quantities() -> st.SearchStrategy[int]:
    """Line quantities within the default ceiling, small ones favoured."""
    return _QUANTITIES


def money() -> st.SearchStrategy[int | float]:
    """Non-negative amounts with at most 2 decimals, as JSON integers or numbers."""
    return _MONEY


def _event_time() -> st.SearchStrategy[str]:
    return st.sampled_from(["2026-11-20T10:15:00.000+05:30", "2026-11-20T04:45:00.000+00:00", "20-11-2026T10:15:00"])


def _optional(draw: st.DrawFn, posting: dict[str, Any], key: str, value: st.SearchStrategy[Any]) -> None:
    """Set ``key`` to a value, to null, or leave it out: Increff does all three for optional fields."""
    choice = draw(st.sampled_from(["value", "value", "null", "absent"]))
    if choice == "value":
        posting[key] = draw(value)
    elif choice == "null":
        posting[key] = None


def _unique(draw: st.DrawFn, count: int, prefix: str) -> list[str]:
    drawn = draw(st.lists(codes(), min_size=count, max_size=count, unique=True))
    return [f"{prefix}{code}"[:MAX_TEXT] for code in drawn] if prefix else drawn


@st.composite
def order_items(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 4, cancel_all: bool = False) -> list[dict[str, Any]]:
    count = draw(st.integers(min_size, max_size))
    items = []
    for code in _unique(draw, count, ""):
        ordered = draw(quantities())
        item: dict[str, Any] = {
            "orderItemCode": code,
            "channelSkuCode": draw(codes()),
            "orderedQuantity": ordered,
            "sellingPricePerUnit": draw(money()),
        }
        cancelled = ordered if cancel_all else draw(st.integers(0, ordered))
        if cancelled or draw(st.booleans()):
            item["cancelledQuantity"] = cancelled
        elif draw(st.booleans()):
            item["cancelledQuantity"] = None  # optional: null means 0
        _optional(draw, item, "barcode", st.integers(10**12, 10**13 - 1).map(str))
        _optional(draw, item, "omsItemId", st.integers(1, JAVA_LONG_MAX))
        items.append(item)
    return items


@st.composite
def shipments(draw: st.DrawFn, items: list[dict[str, Any]], *, min_size: int = 1, max_size: int = 3) -> list[dict[str, Any]]:
    count = draw(st.integers(min_size, max_size))
    result = []
    for code in _unique(draw, count, "SHP-"):
        lines = draw(st.lists(st.sampled_from(items), min_size=1, max_size=3)) if items else []
        shipment_items = []
        for item in lines or [{"orderItemCode": None, "channelSkuCode": draw(codes())}]:
            line: dict[str, Any] = {
                "orderItemCode": item["orderItemCode"],
                "channelSkuCode": item["channelSkuCode"],
                "quantity": draw(quantities()),
                "sellingPricePerUnit": draw(money()),
            }
            _optional(draw, line, "taxItems", _TAX_ITEMS)
            shipment_items.append(line)
        shipment: dict[str, Any] = {"shipmentCode": code, "shipmentItems": shipment_items}
        _optional(draw, shipment, "shipmentStatus", st.sampled_from(["DISPATCHED", "DELIVERED"]))
        _optional(draw, shipment, "externalInvoiceId", codes())
        _optional(draw, shipment, "irn", st.integers(0, 16**64 - 1).map("{:064x}".format))
        result.append(shipment)
    return result


def _extras(draw: st.DrawFn, posting: dict[str, Any]) -> None:
    """Fields Increff may add that the models ignore; the inbox keeps them in the stored posting."""
    if draw(st.booleans()):
        posting["fieldIncreffAddsLater"] = draw(_EXTRA_VALUES)


@st.composite
def outward_postings(draw: st.DrawFn, event_type: str | None = None) -> dict[str, Any]:
    """An ``OUTWARD_ORDER_*`` posting the inbox accepts (CREATE, CANCEL, COMPLETE or an ignored documented type)."""
    event_type = event_type or draw(st.sampled_from(sorted(settings.OUTWARD_EVENTS)))
    order_code = draw(codes())
    posting: dict[str, Any] = {"messageId": draw(message_ids()), "eventType": event_type, "orderCode": order_code}
    for key in ("parentOrderCode", "channelName", "partnerCode", "locationCode"):
        _optional(draw, posting, key, codes())
    _optional(draw, posting, "eventTime", _event_time())
    _optional(draw, posting, "orderTime", _event_time())
    _optional(draw, posting, "isPriority", st.sampled_from([True, False, "true", "false", "TRUE"]))
    _optional(draw, posting, "omsOrderId", st.integers(1, JAVA_LONG_MAX))
    _optional(draw, posting, "isSplitRequired", st.sampled_from(["false", "true", False]))
    if event_type in (CREATE, COMPLETE):
        posting["orderItems"] = draw(order_items())
    elif event_type == CANCEL:
        _optional(draw, posting, "orderItems", order_items(min_size=0, cancel_all=True))
    else:
        _optional(draw, posting, "orderItems", order_items(min_size=0))
    if event_type == COMPLETE:
        posting["shipments"] = draw(shipments(posting["orderItems"]))
    elif event_type in settings.IGNORED_OUTWARD_EVENTS:
        _optional(draw, posting, "shipments", shipments(posting.get("orderItems") or [], min_size=0))
    else:
        _optional(draw, posting, "shipments", st.just([]))
    attributes = {"attribute1": str(draw(st.integers(4_000_000_000, 4_099_999_999)))}
    _optional(draw, attributes, "attribute2", st.integers(100_000, 999_999).map(str))
    _optional(draw, attributes, "attribute3", st.sampled_from(["KARNATAKA", "MAHARASHTRA", "महाराष्ट्र"]))
    _optional(draw, attributes, "channelMetadata", st.just({}))
    _optional(draw, posting, "orderCustomAttributes", st.just(attributes))
    _extras(draw, posting)
    return posting


@st.composite
def return_postings(draw: st.DrawFn, event_type: str | None = None, *, without_event_type: bool | None = None) -> dict[str, Any]:
    """A return posting the inbox accepts: ``RETURN_ORDER_COMPLETE`` (or no eventType) or an ignored return event."""
    event_type = event_type or draw(st.sampled_from(sorted(settings.RETURN_EVENTS)))
    posting: dict[str, Any] = {
        "messageId": draw(message_ids()),
        "returnOrderCode": draw(codes()),
        "forwardOrderCode": draw(codes()),
    }
    omit = draw(st.booleans()) if without_event_type is None else without_event_type
    if event_type != RETURN or not omit:
        posting["eventType"] = event_type
    elif draw(st.booleans()):
        posting["eventType"] = None  # absent or null: recognised by returnOrderCode (domain.md decision 2)
    for key in ("locationCode", "channelName", "returnOrderType", "eventTime", "paymentMethod"):
        _optional(draw, posting, key, st.sampled_from(["CUSTOMER_RETURN", "RETURN_TO_ORIGIN", "WH-BLR-01", "AJIO_VMS"]))
    count = draw(st.integers(1 if event_type == RETURN else 0, 4))
    items = []
    for code in _unique(draw, count, ""):
        item: dict[str, Any] = {"itemCode": code, "channelSkuCode": draw(codes())}
        _optional(draw, item, "qcStatus", st.sampled_from(["PASS", "FAIL"]))
        _optional(draw, item, "qcReason", texts())
        _optional(draw, item, "returnReason", texts())
        _optional(draw, item, "sellingPricePerUnit", money())
        _optional(draw, item, "isExcess", st.sampled_from([True, False, "false"]))
        _optional(draw, item, "imageUrls", st.just([]))
        items.append(item)
    if items or event_type == RETURN:
        posting["items"] = items
    else:
        _optional(draw, posting, "items", st.just([]))
    _optional(draw, posting, "shipments", st.just([]))
    _extras(draw, posting)
    return posting


def valid_postings() -> st.SearchStrategy[dict[str, Any]]:
    """Any posting the inbox stores: every outward and return event type Increff documents."""
    return st.one_of(outward_postings(), return_postings())


def canonical_event_type(posting: dict[str, Any]) -> str:
    """The eventType the inbox records for a valid posting (returns without one are RETURN_ORDER_COMPLETE)."""
    return posting.get("eventType") or RETURN


def canonical_message_id(posting: dict[str, Any]) -> str:
    return str(int(posting["messageId"]))


# --- mutations --------------------------------------------------------------------------------------

MESSAGE_ID, EVENT_TYPE, RETURN_EVENT_TYPE = "message_id", "event_type", "return_event_type"
REQUIRED_CODE, OPTIONAL_TEXT, SHORT_TEXT = "required_code", "optional_text", "short_text"
REQUIRED_QUANTITY, OPTIONAL_QUANTITY, MONEY, FLAG = "required_quantity", "optional_quantity", "money", "flag"
REQUIRED_ARRAY, OPTIONAL_ARRAY = "required_array", "optional_array"
DELETE = object()  # marker: remove the field


@dataclass(frozen=True)
class Mutation:
    """An invalid request derived from a valid posting: what was changed, the JSON body, the status expected."""

    description: str
    body: Any
    status: int

    def content(self) -> str:
        return json.dumps(self.body)


def _bad_text(draw: st.DrawFn) -> str:
    base = draw(codes())
    char = draw(st.sampled_from(FORBIDDEN_CHARACTERS))
    at = draw(st.integers(0, len(base)))
    return base[:at] + char + base[at:]


def _misspelt_event_type(draw: st.DrawFn, original: str | None) -> str:
    original = original or RETURN  # a return posting may have no eventType
    variants = [original.lower(), original.title(), original + "\x00", original.replace("_", "-"), original.replace("_", " "),
                original[:-1], "OUTWARD_ORDER_" + original, draw(_RANDOM_TEXT)]
    return draw(st.sampled_from([v for v in variants if v.strip() not in settings.KNOWN_EVENTS] or ["NOT_AN_EVENT"]))


def _bad_values(draw: st.DrawFn, kind: str, original: Any) -> list[Any]:
    """Values that must make a field of ``kind`` invalid (``DELETE`` removes it)."""
    long_text = "x" * (MAX_TEXT + 1 + len(str(original)))
    wrong_types = [True, False, 7, 1.5, [], {}, [original]]
    ceiling = settings.DEFAULT_MAX_LINE_QUANTITY
    if kind == MESSAGE_ID:
        return [DELETE, None, True, False, 0, -1, -(2**63), 2**63, 2**64, 10**30, 1.5, 1000.0, "NaN", "Infinity", "∞",
                "-5", "+5", " 12", "12 ", "1 2", "1_000", "١٢٣", "１２", "", "0", "00", str(2**63), "12a", "0x1F", [], {}]
    if kind == EVENT_TYPE:
        return [DELETE, None, "", 5, True, [], _misspelt_event_type(draw, original)]
    if kind == RETURN_EVENT_TYPE:  # absent or null is valid for a return posting; misspelt or mistyped is not
        return ["", 5, True, [], _misspelt_event_type(draw, original)]
    if kind == REQUIRED_CODE:
        return [DELETE, None, "", "   ", long_text, _bad_text(draw), *wrong_types[:-1]]
    if kind == OPTIONAL_TEXT:
        return [long_text, _bad_text(draw), True, 7, 1.5, [], {}]
    if kind == SHORT_TEXT:  # qcStatus: PASS | FAIL, at most 32 characters
        return ["x" * 33, _bad_text(draw), True, 7, [], {}]
    if kind in (REQUIRED_QUANTITY, OPTIONAL_QUANTITY):
        values = [True, False, -1, -(10**6), ceiling + 1, 10**12, 10**20, 2**63, 1.5, 2.0, "2", "", [], {}]
        return [DELETE, None, *values] if kind == REQUIRED_QUANTITY else values
    if kind == MONEY:
        return [True, False, -0.01, -5, 10**10, 1e20, 9999999999.99999, "12.50", "", [], {}]
    if kind == FLAG:
        return [1, 0, 2, "yes", "", "maybe", [], {}]
    if kind == REQUIRED_ARRAY:
        return [DELETE, None, [], {}, "x", 5, True, [5], [None], ["x"]]
    if kind == OPTIONAL_ARRAY:
        return [{}, "x", 5, True, [5], ["x"], [None]]
    raise ValueError(f"unknown field kind {kind}")


def _targets(posting: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Every field of a valid posting that a mutation may break, with its kind."""
    targets: list[tuple[tuple[Any, ...], str]] = [(("messageId",), MESSAGE_ID)]
    is_return = "returnOrderCode" in posting and not str(posting.get("eventType") or "").startswith("OUTWARD")
    event_type = canonical_event_type(posting)

    def optional_texts(prefix: tuple[Any, ...], record: dict[str, Any], keys: tuple[str, ...]) -> None:
        targets.extend(((*prefix, key), OPTIONAL_TEXT) for key in keys)

    if is_return:
        targets.append((("eventType",), RETURN_EVENT_TYPE))
        targets += [(("returnOrderCode",), REQUIRED_CODE), (("forwardOrderCode",), REQUIRED_CODE)]
        optional_texts((), posting, ("returnOrderType", "locationCode", "channelName", "eventTime"))
        targets.append((("items",), REQUIRED_ARRAY if event_type == RETURN else OPTIONAL_ARRAY))
        for i, _item in enumerate(posting.get("items") or []):
            targets += [(("items", i, "itemCode"), REQUIRED_CODE), (("items", i, "channelSkuCode"), REQUIRED_CODE)]
            targets += [(("items", i, "qcStatus"), SHORT_TEXT), (("items", i, "sellingPricePerUnit"), MONEY)]
            targets += [(("items", i, "isExcess"), FLAG)]
            optional_texts(("items", i), _item, ("qcReason", "returnReason"))
        return targets

    targets += [(("eventType",), EVENT_TYPE), (("orderCode",), REQUIRED_CODE), (("isPriority",), FLAG)]
    optional_texts((), posting, ("parentOrderCode", "channelName", "partnerCode", "locationCode", "orderTime", "eventTime"))
    if isinstance(posting.get("orderCustomAttributes"), dict):
        targets.append((("orderCustomAttributes", "attribute1"), OPTIONAL_TEXT))
    targets.append((("orderItems",), REQUIRED_ARRAY if event_type in (CREATE, COMPLETE) else OPTIONAL_ARRAY))
    targets.append((("shipments",), REQUIRED_ARRAY if event_type == COMPLETE else OPTIONAL_ARRAY))
    for i, _item in enumerate(posting.get("orderItems") or []):
        base = ("orderItems", i)
        targets += [((*base, "orderItemCode"), REQUIRED_CODE), ((*base, "channelSkuCode"), REQUIRED_CODE)]
        targets += [((*base, "orderedQuantity"), REQUIRED_QUANTITY), ((*base, "cancelledQuantity"), OPTIONAL_QUANTITY)]
        targets += [((*base, "sellingPricePerUnit"), MONEY), ((*base, "barcode"), OPTIONAL_TEXT)]
    for i, shipment in enumerate(posting.get("shipments") or []):
        base = ("shipments", i)
        targets += [((*base, "shipmentCode"), REQUIRED_CODE), ((*base, "shipmentItems"), REQUIRED_ARRAY)]
        optional_texts(base, shipment, ("shipmentStatus", "externalInvoiceId", "irn"))
        for j, line in enumerate(shipment["shipmentItems"]):
            item = (*base, "shipmentItems", j)
            targets += [((*item, "channelSkuCode"), REQUIRED_CODE), ((*item, "quantity"), REQUIRED_QUANTITY)]
            targets += [((*item, "sellingPricePerUnit"), MONEY), ((*item, "taxItems"), OPTIONAL_ARRAY)]
            for k, _tax in enumerate(line.get("taxItems") or []):
                targets += [((*item, "taxItems", k, "rate"), MONEY), ((*item, "taxItems", k, "type"), OPTIONAL_TEXT)]
    return targets


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent: Any = document
    for step in path[:-1]:
        parent = parent[step]
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for n in range(depth):
        value = [value] if n % 2 else {"n": value}
    return value


@st.composite
def mutations(draw: st.DrawFn, posting: dict[str, Any]) -> Mutation:
    """One way to make ``posting`` invalid, with the status the inbox must answer (400, or 413 when too deep)."""
    mutated = copy.deepcopy(posting)
    kind = draw(st.sampled_from(["field"] * 8 + ["duplicate", "too_deep", "not_an_object"]))
    if kind == "too_deep":
        mutated["fieldIncreffAddsLater"] = _nested(draw(st.integers(33, 80)))
        return Mutation("nested deeper than 32 levels", mutated, 413)
    if kind == "not_an_object":
        body = draw(st.sampled_from([[mutated], "posting", 5, None, True]))
        return Mutation(f"top level is {type(body).__name__}", body, 400)
    if kind == "duplicate":
        lists = [key for key in ("orderItems", "shipments", "items") if mutated.get(key)]
        if lists:
            key = draw(st.sampled_from(lists))
            mutated[key].append(copy.deepcopy(draw(st.sampled_from(mutated[key]))))
            return Mutation(f"{key}: an entry repeated with the same code", mutated, 400)
    path, field_kind = draw(st.sampled_from(_targets(posting)))
    value = draw(st.sampled_from(_bad_values(draw, field_kind, _get(posting, path))))
    _set(mutated, path, value)
    shown = "deleted" if value is DELETE else ascii(value)[:60]
    return Mutation(f"{'.'.join(map(str, path))} ({field_kind}) = {shown}", mutated, 400)


def _get(document: dict[str, Any], path: tuple[Any, ...]) -> Any:
    value: Any = document
    for step in path:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            return None
    return value
