"""Property tests of the inbox through the real app and a real ledger (SQLite, and a smaller run on PostgreSQL).

For every event type Increff documents, generated valid postings (nulls, absent optional fields, Unicode,
unknown extra fields) are stored exactly once: a re-send is answered 200 without a new row, the same
messageId with other content 409. Generated mutations of them (wrong types, nulls, sizes, control and
bidirectional characters, huge numbers, booleans for numbers, unknown event types, nested garbage)
are refused with the expected 4xx and leave nothing in ``inbox_message``. Never a 5xx, always
Increff's answer shape.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from omni_erp.ledger.tables import inbox_message
from omni_erp.states import IGNORED, PENDING
from tests.inbox.conftest import Inbox
from tests.strategies import Mutation, canonical_event_type, mutations, valid_postings

# Examples per test: together about 10 s on 2 cores, the PostgreSQL ones included.
SQLITE_VALID, SQLITE_INVALID, PG_VALID, PG_INVALID = 50, 200, 15, 30
_quick = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_message_ids = itertools.count(7_000_000_001)


@pytest.fixture(scope="module")
def sqlite_inbox(tmp_path_factory) -> Inbox:
    from omni_erp.ledger.engine import sqlite_url

    return Inbox(sqlite_url(tmp_path_factory.mktemp("properties") / "ledger.sqlite"))


@pytest.fixture()
def pg_inbox(pg_ledger_url) -> Inbox:
    return Inbox(pg_ledger_url)


def _rows(inbox: Inbox, message_id: str | None = None) -> list[Any]:
    query = sa.select(inbox_message.c.message_id, inbox_message.c.event_type, inbox_message.c.state, inbox_message.c.payload)
    if message_id is not None:
        query = query.where(inbox_message.c.message_id == message_id)
    with inbox.ledger.engine.connect() as conn:
        return list(conn.execute(query))


def _row_count(inbox: Inbox) -> int:
    with inbox.ledger.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(inbox_message)).scalar_one()


def _assert_increff_shape(response, *, ok: bool) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    if ok:
        assert body == {"hasError": False}
    else:
        assert set(body) == {"hasError", "errorMessage"} and body["hasError"] is True and body["errorMessage"]


def _with_fresh_id(posting: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Give the posting an id no earlier example used, in the form (number or digit string) it was drawn in."""
    number = next(_message_ids)
    fresh = {**posting, "messageId": str(number) if isinstance(posting["messageId"], str) else number}
    return fresh, str(number)


def check_valid_posting_is_stored_once(inbox: Inbox, posting: dict[str, Any]) -> None:
    posting, message_id = _with_fresh_id(posting)

    first = inbox.post(posting)
    again = inbox.post(json.dumps(posting, indent=1))  # same content, other formatting
    changed = inbox.post({**posting, "resentWithChange": True})

    _assert_increff_shape(first, ok=True)
    _assert_increff_shape(again, ok=True)
    assert (first.status_code, again.status_code, changed.status_code) == (200, 200, 409), changed.text
    _assert_increff_shape(changed, ok=False)
    [row] = _rows(inbox, message_id)
    event_type = canonical_event_type(posting)
    assert row.event_type == event_type
    assert row.state == (PENDING if event_type in {"OUTWARD_ORDER_CREATE", "OUTWARD_ORDER_CANCEL",
                                                   "OUTWARD_ORDER_COMPLETE", "RETURN_ORDER_COMPLETE"} else IGNORED)
    assert json.loads(row.payload) == posting  # as received, not the first or the changed one's model dump


def check_invalid_posting_is_refused(inbox: Inbox, mutation: Mutation) -> None:
    before = _row_count(inbox)

    response = inbox.post(mutation.content())

    event(f"answered {response.status_code}")  # the status mix, shown by --hypothesis-show-statistics
    _assert_increff_shape(response, ok=False)
    assert response.status_code == mutation.status, f"{mutation.description}: {response.status_code} {response.text}"
    assert _row_count(inbox) == before


@settings(_quick, max_examples=SQLITE_VALID)
@given(posting=valid_postings())
def test_valid_postings_of_every_event_type_are_stored_exactly_once(sqlite_inbox, posting):
    check_valid_posting_is_stored_once(sqlite_inbox, posting)


@settings(_quick, max_examples=SQLITE_INVALID)
@given(posting=valid_postings(), data=st.data())
def test_mutated_postings_are_refused_with_4xx_and_nothing_is_stored(sqlite_inbox, posting, data):
    posting, _ = _with_fresh_id(posting)
    check_invalid_posting_is_refused(sqlite_inbox, data.draw(mutations(posting), label="mutation"))


@pytest.mark.postgres
@settings(_quick, max_examples=PG_VALID)
@given(posting=valid_postings())
def test_valid_postings_are_stored_exactly_once_on_postgres(pg_inbox, posting):
    check_valid_posting_is_stored_once(pg_inbox, posting)


@pytest.mark.postgres
@settings(_quick, max_examples=PG_INVALID)
@given(posting=valid_postings(), data=st.data())
def test_mutated_postings_are_refused_on_postgres(pg_inbox, posting, data):
    posting, _ = _with_fresh_id(posting)
    check_invalid_posting_is_refused(pg_inbox, data.draw(mutations(posting), label="mutation"))
