"""The inbox writer's own connection (issue 8.2): kept while postings come, given back when they stop,
and a connection the database dropped costs no posting."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from omni_erp.inbox import InboxSettings, build_standalone_app, writer
from omni_erp.ledger import Ledger
from omni_erp.sandbox.serve import serve_in_thread
from tests.inbox.conftest import API_KEY
from tests.inbox.test_group_commit import _post, _posting, _rows


def _checked_out(ledger_url: str) -> int:
    return Ledger(ledger_url).engine.pool.checkedout()  # the engine the inbox uses (cached per URL and process)


def test_a_batch_is_one_statement_committed_before_any_of_its_postings_is_answered(ledger_url):
    """No BEGIN or COMMIT round trips around the batch (each was a wait for the database and the GIL): the
    one INSERT is its own transaction, and every posting of it is readable elsewhere once answered."""
    ledger = Ledger(ledger_url)
    postings = [
        dict(message_id=str(8_000_001 + n), event_type="OUTWARD_ORDER_CREATE", business_key=f"FN{n}",
             order_code=f"FN{n}", payload={"n": n})
        for n in range(5)
    ]  # fmt: skip
    statements: list[tuple[str, bool]] = []  # first word, and whether it runs inside a transaction around it

    def listener(conn, cursor, statement, *rest) -> None:
        driver = conn.connection.driver_connection
        # sqlite3: a BEGIN was sent; psycopg: off autocommit, it sends BEGIN itself along with the statement.
        wrapped = driver.in_transaction if hasattr(driver, "in_transaction") else not driver.autocommit
        statements.append((statement.split()[0].upper(), wrapped))

    batching = writer.PostingWriter(lambda: ledger, max_wait_s=0.5)  # the five arrive well inside one batch
    visible: list[int] = []

    async def store_all() -> list[str]:
        async def store(posting):
            answer = await batching.store(posting)
            visible.append(len(_rows(ledger_url)))  # read on a connection of its own, as the flows would
            return answer

        return await asyncio.gather(*(store(posting) for posting in postings))

    sa.event.listen(ledger.engine, "before_cursor_execute", listener)
    try:
        answers = asyncio.run(store_all())
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", listener)

    assert answers == ["stored"] * 5 and batching.commits == 1
    assert statements == [("INSERT", False)]
    assert visible == [5] * 5


def test_the_writer_gives_its_connection_back_once_postings_stop(ledger_url):
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=ledger_url))
    with serve_in_thread(app, "127.0.0.1", 0) as server:
        assert _post(server.url, _posting(8_100_001)).status_code == 200
        deadline = time.monotonic() + 10 * writer.IDLE_RETURN_S + 5
        while _checked_out(ledger_url) and time.monotonic() < deadline:
            time.sleep(writer.IDLE_RETURN_S)
        assert _checked_out(ledger_url) == 0  # nothing held between bursts: nothing leaks when the app goes
        assert _post(server.url, _posting(8_100_002)).status_code == 200
    assert set(_rows(ledger_url)) == {"8100001", "8100002"}


@pytest.mark.postgres
def test_a_connection_the_database_dropped_costs_no_posting(pg_ledger_url, monkeypatch):
    monkeypatch.setattr(writer, "IDLE_RETURN_S", 60.0)  # the writer holds its connection through the kill below
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=pg_ledger_url))
    with serve_in_thread(app, "127.0.0.1", 0) as server:
        assert _post(server.url, _posting(8_200_001)).status_code == 200
        assert _checked_out(pg_ledger_url) == 1
        engine = sa.create_engine(pg_ledger_url)
        try:
            with engine.connect() as conn:  # as a database restart or an idle timeout would
                killed = conn.execute(sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"
                )).scalar_one()
        finally:
            engine.dispose()
        assert killed >= 1

        answers = [_post(server.url, _posting(8_200_002 + n)).status_code for n in range(3)]

    assert answers == [200, 200, 200]
    assert set(_rows(pg_ledger_url)) == {"8200001", "8200002", "8200003", "8200004"}
