"""RunScope parsing (omni_erp.run_scope): what the trigger form and the templates hand the operators."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.run_scope import MAX_ORDER_CODE_LENGTH, MAX_ORDER_CODES, RunScope, parse_flag, parse_order_codes, parse_window

# Printable characters (letters, marks, digits, punctuation, symbols, the ASCII space): what an order code may hold.
_PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" ")
_CONTROL = st.characters(categories=("Cc", "Cf"), exclude_characters="\t\n\r\x0b\x0c\x1c\x1d\x1e\x85")
CODES = st.text(_PRINTABLE, min_size=1, max_size=40).map(str.strip).filter(bool)
CODE_LISTS = st.lists(CODES, max_size=30)
SETTINGS = settings(max_examples=60, deadline=None)


def _once(codes: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(codes))


def _rendered(codes: list[str]) -> str:
    """``order_codes`` as the DAGs' template renders it (``dag_conventions.default_args``)."""
    return jinja2.Environment().from_string("{{ params.order_codes | default([], true) | tojson }}").render(
        params={"order_codes": codes}
    )


@SETTINGS
@given(CODE_LISTS)
def test_order_codes_read_the_same_from_a_list_its_json_the_template_and_lines(codes):
    expected = _once(codes)
    assert parse_order_codes(codes) == expected
    assert parse_order_codes(json.dumps(codes)) == expected
    assert parse_order_codes(_rendered(codes)) == expected
    if all("," not in c for c in codes) and not (codes and codes[0].startswith("[")):
        assert parse_order_codes("\n".join(codes)) == expected  # one per line, as typed
        assert parse_order_codes(" , ".join(codes)) == expected
    assert RunScope.parse(order_codes=_rendered(codes)).selective == bool(codes)


@SETTINGS
@given(CODE_LISTS, st.lists(st.sampled_from(["", "   "]), max_size=3))
def test_blank_entries_and_surrounding_spaces_are_dropped(codes, blanks):
    padded = [f"  {c} " for c in codes] + blanks
    assert parse_order_codes(padded) == _once(codes)


@SETTINGS
@given(CODES, _CONTROL, CODES, st.sampled_from(["list", "json"]))
def test_a_control_or_invisible_character_inside_a_code_is_refused(head, control, tail, form):
    code = f"{head}{control}{tail}"
    value = ["FN1", code] if form == "list" else json.dumps(["FN1", code])
    with pytest.raises(ValueError, match="control or invisible"):
        parse_order_codes(value)


@SETTINGS
@given(st.integers(MAX_ORDER_CODE_LENGTH + 1, MAX_ORDER_CODE_LENGTH + 50), st.sampled_from(["list", "json", "lines"]))
def test_a_code_longer_than_the_ledger_holds_is_refused(length, form):
    code = "F" * length
    value = {"list": [code], "json": json.dumps([code]), "lines": f"FN1\n{code}"}[form]
    with pytest.raises(ValueError, match=f"longer than {MAX_ORDER_CODE_LENGTH}"):
        parse_order_codes(value)
    assert parse_order_codes(["F" * MAX_ORDER_CODE_LENGTH]) == ("F" * MAX_ORDER_CODE_LENGTH,)


@SETTINGS
@given(st.integers(1, 20), st.integers(0, 5))
def test_more_than_the_most_order_codes_is_refused_repeats_counting_once(extra, repeats):
    allowed = [f"FN{n:010d}" for n in range(MAX_ORDER_CODES)]
    assert len(parse_order_codes(allowed + allowed[:repeats])) == MAX_ORDER_CODES
    too_many = allowed + [f"FX{n}" for n in range(extra)]
    with pytest.raises(ValueError, match=f"at most {MAX_ORDER_CODES} order codes"):
        parse_order_codes(json.dumps(too_many))


@pytest.mark.parametrize(
    "value, message",
    [
        ('["FN1", 7]', "must hold text"),
        ('["FN1"', "not a valid JSON list"),
        (42, "must be a list"),
    ],
)
def test_order_codes_that_are_not_a_list_of_text_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        parse_order_codes(value)


@SETTINGS
@given(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)),
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30)),
    st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3))]),
)
def test_a_window_reads_back_from_its_rendered_text(start, length, zone):
    start = start.replace(tzinfo=zone)
    end = start + length
    assert parse_window(f"{start.isoformat()}/{end.isoformat()}") == (start, end)
    assert parse_window((start, end)) == (start, end)
    scope = RunScope.parse(window=f"{start.isoformat()}/{end.isoformat()}")
    assert scope.covers_time(start) and not scope.covers_time(end) and scope.selective
    with pytest.raises(ValueError, match="start must be before its end"):
        parse_window(f"{end.isoformat()}/{start.isoformat()}")
    with pytest.raises(ValueError, match="need a timezone"):
        parse_window(f"{start.replace(tzinfo=None).isoformat()}/{end.replace(tzinfo=None).isoformat()}")


@pytest.mark.parametrize("value", ["", "  ", None])
def test_no_window_means_no_restriction(value):
    assert parse_window(value) is None
    assert RunScope.parse(window=value) == RunScope()


@pytest.mark.parametrize("value", ["2026-12-01T10:00:00+00:00", "yesterday/today", "a/b/c"])
def test_a_window_that_is_not_two_iso_times_is_refused(value):
    with pytest.raises(ValueError, match="window must be"):
        parse_window(value)


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), ("True", True), ("true", True), ("1", True), (False, False), ("False", False), ("", False), (None, False)],
)
def test_dry_run_reads_the_rendered_flag(value, expected):
    assert parse_flag(value) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "on please"])
def test_a_dry_run_flag_that_is_neither_true_nor_false_is_refused(value):
    with pytest.raises(ValueError, match="dry_run must be true or false"):
        parse_flag(value)
