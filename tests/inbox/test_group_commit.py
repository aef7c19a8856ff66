"""The group-committing inbox (issue 8.2), served over real HTTP on SQLite and PostgreSQL.

Concurrent postings share transactions, yet every request gets the answer it got when each posting
had its own commit: 200 once per messageId, 200 again for the same content, 409 for other content,
400 for bad data. A 200 is only ever sent after the posting's transaction committed; a database
failure answers 5xx and leaves nothing half-written; one posting the database refuses fails alone.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.inbox import InboxSettings, build_standalone_app
from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from omni_erp.ledger.tables import inbox_message
from omni_erp.sandbox.serve import serve_in_thread
from tests.inbox.conftest import API_KEY, sample

BATCH_WINDOW_S = 0.3  # the tests' writer waits this long for more postings, so a burst shares one transaction


def _posting(message_id: int, order_code: str | None = None, **changes: Any) -> dict[str, Any]:
    posting = copy.deepcopy(sample("outward_order_create.json"))
    posting.update(messageId=message_id, orderCode=order_code or f"FN{message_id}", **changes)
    return posting


def _post(url: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/omni/postings", json=body, headers={"X-Api-Key": API_KEY}, timeout=30)


def _post_all_at_once(url: str, bodies: list[dict[str, Any]], check=None) -> list[requests.Response]:
    """Send every body at the same moment, one thread each; ``check(body, response)`` runs right after each answer."""
    start = threading.Barrier(len(bodies))

    def send(body: dict[str, Any]) -> requests.Response:
        start.wait(10)
        response = _post(url, body)
        if check:
            check(body, response)
        return response

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def _rows(ledger_url: str) -> dict[str, str]:
    """messageId -> orderCode of every stored posting, read on a connection of its own."""
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(inbox_message.c.message_id, inbox_message.c.business_key)).all())
    finally:
        engine.dispose()


class _InsertCounter:
    """Counts the INSERT statements into inbox_message that the ledger's engine runs (one per transaction here)."""

    def __init__(self, ledger_url: str) -> None:
        self.engine = Ledger(ledger_url).engine  # the engine the inbox uses too (cached per URL and process)
        self.count = 0

    def _seen(self, _conn, _cursor, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO INBOX_MESSAGE"):
            self.count += 1

    def __enter__(self) -> _InsertCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)


def _refuse_inserts(ledger_url: str, *, business_key: str | None) -> None:
    """A trigger making the database itself refuse inserts of ``business_key`` (all inserts when None)."""
    Ledger(ledger_url)  # create the schema first
    engine = sa.create_engine(ledger_url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                when = f"WHEN NEW.business_key = '{business_key}'" if business_key else ""
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse_insert BEFORE INSERT ON inbox_message {when} "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
                )
            else:
                condition = f"NEW.business_key = '{business_key}'" if business_key else "TRUE"
                conn.exec_driver_sql(
                    "CREATE FUNCTION refuse_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF {condition} THEN RAISE EXCEPTION 'refused by the test trigger'; END IF; RETURN NEW; END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_insert BEFORE INSERT ON inbox_message FOR EACH ROW EXECUTE FUNCTION refuse_insert()"
                )
    finally:
        engine.dispose()


@pytest.fixture()
def served_inbox(ledger_url):
    """The standalone inbox over HTTP on ``ledger_url``, its writer gathering a burst into one transaction."""
    settings_ = InboxSettings(api_key=API_KEY, ledger_url=ledger_url, group_commit_max_wait_s=BATCH_WINDOW_S)
    app = build_standalone_app(settings_)
    with serve_in_thread(app) as server:
        yield server.url, ledger_url


def test_concurrent_postings_get_the_answers_of_one_commit_each(served_inbox):
    url, ledger_url = served_inbox
    unique = [_posting(8_100_000 + i) for i in range(24)]
    shared = _posting(8_200_000)
    duplicates = [copy.deepcopy(shared) for _ in range(4)]  # the same messageId and content, in one burst
    conflicting = _posting(8_200_000, order_code=shared["orderCode"], isPriority=True)  # same id, other content
    invalid = [_posting(8_300_000 + i, orderItems=None) for i in range(3)]
    bodies = unique + duplicates + [conflicting] + invalid
    not_yet_committed: list[str] = []

    def committed_before_answer(body: dict[str, Any], response: requests.Response) -> None:
        if response.status_code == 200 and str(body["messageId"]) not in _rows(ledger_url):
            not_yet_committed.append(str(body["messageId"]))

    with _InsertCounter(ledger_url) as inserts:
        responses = _post_all_at_once(url, bodies, check=committed_before_answer)

    by_status = [(body, response.status_code) for body, response in zip(bodies, responses, strict=True)]
    assert not_yet_committed == []
    assert all(status == 200 for body, status in by_status[:24])
    assert all(response.json() == {"hasError": False} for response in responses[:24])
    assert all(status == 400 for body, status in by_status[-3:])
    # One of the five postings with messageId 8200000 was stored first; the same content is a duplicate (200),
    # the other content a conflict (409) - as if they had been committed one after the other.
    same_id = by_status[24:29]
    stored_is_priority = _stored_payload(ledger_url, "8200000")["isPriority"]
    assert [status for _, status in same_id] == [200 if body["isPriority"] == stored_is_priority else 409 for body, _ in same_id]
    assert sorted(status for _, status in same_id) in ([200] * 4 + [409], [200] + [409] * 4)
    assert set(_rows(ledger_url)) == {str(b["messageId"]) for b in unique} | {"8200000"}
    # The 409s and the 400s are dead-lettered, as before (stage inbox; one row per messageId and reason).
    dead = Ledger(ledger_url).dead_letters("inbox")
    assert {d["message_id"] for d in dead} == {"8200000"} | {str(b["messageId"]) for b in invalid}
    # 29 storable postings in a burst: a few transactions, not 29.
    assert 1 <= inserts.count <= 4, inserts.count


def _stored_payload(ledger_url: str, message_id: str) -> dict[str, Any]:
    [row] = [r for r in Ledger(ledger_url).postings() if r["message_id"] == message_id]
    return json.loads(row["payload"])


def test_a_posting_the_database_refuses_fails_alone(served_inbox):
    url, ledger_url = served_inbox
    _refuse_inserts(ledger_url, business_key="FNPOISON")
    good = [_posting(8_400_000 + i) for i in range(12)]
    poison = _posting(8_499_999, order_code="FNPOISON")

    with _InsertCounter(ledger_url) as inserts:
        responses = _post_all_at_once(url, good + [poison])

    assert [r.status_code for r in responses] == [200] * 12 + [503]
    assert responses[-1].json() == {"hasError": True, "errorMessage": "could not store the posting; retry"}
    assert set(_rows(ledger_url)) == {str(p["messageId"]) for p in good}
    assert inserts.count > 13 - len(good)  # the failed batch, then each posting on its own


def test_a_database_failure_answers_5xx_to_the_whole_batch_and_stores_nothing(served_inbox):
    url, ledger_url = served_inbox
    _refuse_inserts(ledger_url, business_key=None)

    responses = _post_all_at_once(url, [_posting(8_500_000 + i) for i in range(10)])

    assert {r.status_code for r in responses} == {503}
    assert _rows(ledger_url) == {}


def test_no_answer_before_the_commit(served_inbox):
    """While another transaction holds the ledger's write lock, the posting cannot commit, so no answer comes."""
    url, ledger_url = served_inbox
    Ledger(ledger_url)
    engine = sa.create_engine(ledger_url)
    answer: list[requests.Response] = []
    try:
        with engine.connect() as blocker:
            if engine.dialect.name == "sqlite":
                blocker.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                blocker.begin()
                blocker.exec_driver_sql("LOCK TABLE inbox_message IN EXCLUSIVE MODE")
            sender = threading.Thread(target=lambda: answer.append(_post(url, _posting(8_600_001))))
            sender.start()
            sender.join(BATCH_WINDOW_S + 1.5)
            assert answer == []  # still waiting for its commit
            blocker.rollback()
        sender.join(20)
    finally:
        engine.dispose()
    assert [r.status_code for r in answer] == [200]
    assert set(_rows(ledger_url)) == {"8600001"}


def test_a_failed_batch_leaves_nothing_half_written(ledger_url):
    _refuse_inserts(ledger_url, business_key="FNPOISON")
    ledger = Ledger(ledger_url)
    batch = [
        dict(message_id=str(i), event_type="OUTWARD_ORDER_CREATE", business_key=code, order_code=code, payload={"n": i})
        for i, code in enumerate(["FN1", "FN2", "FNPOISON", "FN4"])
    ]

    with pytest.raises(sa.exc.DBAPIError):
        ledger.record_postings(batch)

    assert _rows(ledger_url) == {}


_ids = st.sampled_from(["11", "12", "13"])
_contents = st.sampled_from([{"v": 1}, {"v": 2}, {"v": 1, "w": [1, 2]}])
_examples = itertools.count()


@pytest.fixture(scope="module")
def two_ledgers(tmp_path_factory) -> tuple[Ledger, Ledger]:
    folder = tmp_path_factory.mktemp("batch")
    return Ledger(sqlite_url(folder / "grouped.sqlite")), Ledger(sqlite_url(folder / "serial.sqlite"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(earlier=st.lists(st.tuples(_ids, _contents), max_size=3), batch=st.lists(st.tuples(_ids, _contents), min_size=1, max_size=8))
def test_one_batch_answers_as_the_same_postings_one_by_one(two_ledgers, earlier, batch):
    """record_postings of a batch (repeats and conflicts within it included) == record_posting of each in turn."""
    grouped, serial = two_ledgers
    example = next(_examples)  # messageIds of their own per example, so the ledgers need not be recreated

    def args(message_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return dict(message_id=f"{example}-{message_id}", event_type="OUTWARD_ORDER_CREATE", business_key="FN1",
                    order_code="FN1", payload=payload)

    for message_id, payload in earlier:
        grouped.record_posting(**args(message_id, payload))
        serial.record_posting(**args(message_id, payload))

    together = grouped.record_postings([args(m, p) for m, p in batch])
    one_by_one = [serial.record_posting(**args(m, p)) for m, p in batch]

    assert together == one_by_one
    stored = [sorted((r["message_id"], r["content_hash"]) for r in ledger.postings()) for ledger in (grouped, serial)]
    assert stored[0] == stored[1]


def test_each_worker_process_builds_the_inbox_as_the_command_line_said(monkeypatch, sqlite_ledger_url):
    """``python -m omni_erp.inbox --workers N``: uvicorn builds each worker's app with ``worker_app`` (its own writer)."""
    from fastapi.testclient import TestClient

    from omni_erp.inbox.__main__ import _WORKER_ARGS_ENV, worker_app

    monkeypatch.delenv("AIRFLOW_CONN_OMNI_INBOX", raising=False)
    monkeypatch.setenv("WORKER_TEST_KEY", API_KEY)
    monkeypatch.setenv(_WORKER_ARGS_ENV, json.dumps({"ledger_url": sqlite_ledger_url, "api_key_env": "WORKER_TEST_KEY"}))

    client = TestClient(worker_app())
    stored = client.post("/omni/postings", json=_posting(8_700_001), headers={"X-Api-Key": API_KEY})
    refused = client.post("/omni/postings", json=_posting(8_700_002), headers={"X-Api-Key": "wrong"})

    assert (stored.status_code, refused.status_code) == (200, 401)
    assert set(_rows(sqlite_ledger_url)) == {"8700001"}
