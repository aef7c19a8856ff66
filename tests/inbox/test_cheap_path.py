"""The inbox's cheap validation path answers exactly as the full one (issue 8.2), on generated postings.

To cut CPU per posting the request path skips work that cannot change the answer: the NUL/lone-surrogate
walk when the JSON text holds no escape that could produce one, the depth walk when the text has fewer
brackets than the depth limit, the models' scan for optional nulls when no value is null, and the
quantity ceiling is read once per posting instead of once per quantity. Each test runs the same input
through the cheap path and the full one (walks always, the old null scan, the setting read per quantity)
and requires the same result: the same record, or the same refusal with the same status and message.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from omni_erp import settings as omni_settings
from omni_erp.inbox import app
from omni_erp.models import omni
from tests.strategies import FORBIDDEN_CHARACTERS, mutations, valid_postings

_quick = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings that stress the escape check: NUL, lone and paired surrogates, other control characters and
# escapes, brackets and quotes (which the bracket count sees inside strings too), any other Unicode.
_TRICKY = st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "\udfff", "x\udbff", "\ud83d\ude00", "😀", "\\u0000", "\\", '"', "[", "{", "]}",
     "\u00e9", "\u202e", "\x1f", "\n", "\u2028", *FORBIDDEN_CHARACTERS]
)
# Any NUL or surrogate (lone or paired) somewhere in otherwise arbitrary text.
_UNSTORABLE = st.builds(
    "{}{}{}".format, st.text(max_size=4), st.just("\x00") | st.integers(0xD800, 0xDFFF).map(chr), st.text(max_size=4)
)
_TEXT = st.one_of(st.text(max_size=12), _TRICKY, _UNSTORABLE, st.lists(_TRICKY | _UNSTORABLE, max_size=4).map("".join))
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), _TEXT)
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8)


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for n in range(depth):
        value = [value] if n % 2 else {"n": value}
    return value


def _serialise(body: Any, ascii_only: bool) -> bytes:
    """JSON as Omni (UTF-8) or a Python client (``\\u`` escapes) would send it; lone surrogates only escaped."""
    try:
        return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8: only its escape can carry it
        return json.dumps(body, ensure_ascii=True).encode("utf-8")


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """Valid postings, their mutations, and either with a generated value put into a known or unknown field."""
    posting = draw(valid_postings())
    body: Any = draw(st.one_of(st.just(posting), mutations(copy.deepcopy(posting)).map(lambda m: m.body)))
    if isinstance(body, dict) and draw(st.booleans()):
        value = draw(st.one_of(_VALUES, st.builds(_nested, st.integers(25, 40), _VALUES)))
        key = draw(st.sampled_from(["fieldIncreffAddsLater", "orderCode", "channelName", "locationCode", "eventTime",
                                    draw(_TEXT)]))
        target = body
        items = body.get("orderItems") or body.get("items")
        if isinstance(items, list) and items and isinstance(items[0], dict) and draw(st.booleans()):
            target = items[0]
        target[key] = value
    return _serialise(body, ascii_only=draw(st.booleans()))


def _outcome(raw: bytes) -> tuple[Any, ...]:
    meta: dict[str, Any] = {"raw": raw}
    try:
        record = app._validate(meta)
    except app._Rejected as rejected:
        return ("refused", rejected.status, rejected.message, rejected.outcome, meta)
    record.pop("payload_json")  # only the cheap path has the text at hand; the stored JSON is checked below
    return ("accepted", record, meta)


@_quick
@given(raw=_bodies())
def test_cheap_validation_answers_exactly_as_the_full_walks(raw):
    cheap = _outcome(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "_may_hold_unstorable", lambda _text: True)
        patch.setattr(app, "_may_be_too_deep", lambda _text: True)
        full = _outcome(raw)

    assert cheap == full
    if cheap[0] == "accepted":
        assert json.loads(app._validate({"raw": raw})["payload_json"]) == cheap[1]["payload"]


@_quick
@given(value=_UNSTORABLE | _VALUES, ascii_only=st.booleans())
def test_no_nul_or_lone_surrogate_passes_the_escape_check(value, ascii_only):
    raw = _serialise({"messageId": 1, "x": value}, ascii_only)
    data, text = app._parse_json(raw)
    try:
        app._check_storable(data)
    except app._Rejected:
        assert app._may_hold_unstorable(text)


@_quick
@given(depth=st.integers(1, 45), leaf=_VALUES, ascii_only=st.booleans())
def test_no_posting_too_deep_passes_the_bracket_count(depth, leaf, ascii_only):
    text = _serialise({"messageId": 1, "x": _nested(depth, leaf)}, ascii_only).decode()
    if app._depth(json.loads(text)) > app.MAX_JSON_DEPTH:
        assert app._may_be_too_deep(text)


def _old_nulls_are_defaults(model: type[Any], data: Any) -> Any:
    """``_Received._nulls_are_defaults`` before the cheap path: the optional keys computed and scanned every time."""
    if not isinstance(data, dict):
        return data
    optional = {key for name, info in model.model_fields.items() if not info.is_required() for key in (name, info.alias)}
    if any(data.get(key, 0) is None for key in optional):
        return {key: value for key, value in data.items() if not (value is None and key in optional)}
    return data


_RECEIVED = [omni.OutwardOrderPosting, omni.ReturnOrderPosting, omni.OrderItem, omni.Shipment, omni.ShipmentItem,
             omni.TaxItem, omni.ReturnItem, omni.OrderCustomAttributes]


@_quick
@given(model=st.sampled_from(_RECEIVED), data=st.data())
def test_the_null_scan_shortcut_changes_nothing(model, data):
    keys = sorted({key for name, info in model.model_fields.items() for key in (name, info.alias or name)})
    document = data.draw(st.dictionaries(st.one_of(st.sampled_from(keys), _TEXT), _LEAVES, max_size=8))

    assert model._nulls_are_defaults(document) == _old_nulls_are_defaults(model, document)


def _parsed(parse: Any, data: dict[str, Any]) -> Any:
    try:
        return parse(copy.deepcopy(data)).model_dump()
    except ValidationError as exc:
        return exc.errors(include_url=False)
    except RuntimeError as exc:
        return ("RuntimeError", str(exc))


def _validate_per_quantity(data: dict[str, Any]) -> Any:
    """``parse_posting`` without the ceiling in the context: every quantity reads the setting, as before."""
    event_type = data.get("eventType")
    is_return = (isinstance(event_type, str) and event_type.strip().startswith("RETURN_ORDER")) or (
        event_type is None and "returnOrderCode" in data
    )
    return (omni.ReturnOrderPosting if is_return else omni.OutwardOrderPosting).model_validate(data)


@pytest.mark.parametrize("ceiling", [None, "1", "3", "many"])
@settings(_quick, max_examples=25)
@given(posting=valid_postings(), data=st.data())
def test_the_quantity_ceiling_read_once_per_posting_decides_as_per_quantity(ceiling, posting, data):
    body = data.draw(st.one_of(st.just(posting), mutations(copy.deepcopy(posting)).map(lambda m: m.body)))
    if not isinstance(body, dict):
        return
    with pytest.MonkeyPatch.context() as patch:
        if ceiling is None:
            patch.delenv(omni_settings.MAX_LINE_QUANTITY_ENV, raising=False)
        else:
            patch.setenv(omni_settings.MAX_LINE_QUANTITY_ENV, ceiling)
        assert _parsed(omni.parse_posting, body) == _parsed(_validate_per_quantity, body)
