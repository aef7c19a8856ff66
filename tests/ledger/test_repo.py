"""Ledger behaviour on both backends (SQLite file in WAL mode, throwaway PostgreSQL)."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import SCHEMA_VERSION, current_version
from omni_erp.ledger.tables import inbox_message
from omni_erp.states import CLAIMED, DEAD, DONE, PENDING

CREATE = "OUTWARD_ORDER_CREATE"


def _store(ledger: Ledger, n: int, event_type: str = CREATE, start: int = 1) -> None:
    for i in range(start, start + n):
        ledger.record_posting(
            message_id=str(i), event_type=event_type, business_key=f"FN{i}", order_code=f"FN{i}", payload={"messageId": i}
        )


def test_schema_is_created_and_versioned_on_first_use(ledger_url):
    ledger = Ledger(ledger_url)
    with ledger.engine.connect() as conn:
        assert current_version(conn) == SCHEMA_VERSION
        assert {"inbox_message", "ajio_order", "outbound_call", "dead_letter", "sync_cursor"} <= set(
            sa.inspect(conn).get_table_names()
        )


def test_same_posting_twice_is_one_row_and_other_content_is_a_conflict(ledger_url):
    ledger = Ledger(ledger_url)
    payload = {"messageId": 7, "orderCode": "FN7", "orderItems": [{"a": 1}]}
    kwargs = dict(message_id="7", event_type=CREATE, business_key="FN7", order_code="FN7")
    assert ledger.record_posting(**kwargs, payload=payload) == "stored"
    # Same content with another key order is the same posting.
    assert ledger.record_posting(**kwargs, payload=dict(reversed(list(payload.items())))) == "duplicate"
    assert ledger.record_posting(**kwargs, payload={**payload, "orderCode": "FN8"}) == "conflict"
    rows = ledger.postings()
    assert len(rows) == 1
    assert '"FN7"' in rows[0]["payload"] and rows[0]["state"] == PENDING


_CONTENTS = [{"v": 1, "w": [1, 2]}, {"v": 2, "w": [1, 2]}, {"v": 1.0, "w": [1, 2]}, {"w": [1, 2], "v": "1"}]
_TEXTS = {  # how a sender may write the same content: as received, re-spaced, keys reordered
    "compact": lambda c: json.dumps(c, separators=(",", ":")),
    "spaced": lambda c: json.dumps(c, indent=2),
    "reordered": lambda c: json.dumps(dict(reversed(list(c.items())))),
}
_deliveries = st.lists(
    st.tuples(st.sampled_from("ABC"), st.integers(0, len(_CONTENTS) - 1), st.sampled_from(sorted(_TEXTS))),
    min_size=1, max_size=10,
)  # fmt: skip
_example_ids = itertools.count()


def _canonical(content: object) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(legacy=st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, len(_CONTENTS) - 1)), max_size=2),
       deliveries=_deliveries, batched=st.booleans())  # fmt: skip
def test_a_repeat_is_a_duplicate_exactly_when_its_content_is_the_same_however_it_is_written(
    ledger_url, legacy, deliveries, batched
):
    """Same messageId: "duplicate" when the JSON content is equal (whatever the spacing or key order, and
    also against rows stored with the canonical-content hash of earlier versions), "conflict" otherwise;
    1 and 1.0 and "1" are different content. Batched (the inbox's group commit) or one at a time alike."""
    ledger = Ledger(ledger_url)
    prefix = f"dedupe-{next(_example_ids)}-"
    first: dict[str, str] = {}  # messageId -> canonical content of the stored posting (the oracle)
    with ledger.engine.begin() as conn:  # rows as earlier versions stored them: hash of the canonical form
        for key, index in dict(legacy).items():
            text, canonical = json.dumps(_CONTENTS[index]), _canonical(_CONTENTS[index])
            first[key] = canonical
            conn.execute(sa.insert(inbox_message).values(
                message_id=prefix + key, event_type=CREATE, business_key="FN1", order_code="FN1", payload=text,
                content_hash=hashlib.sha256(canonical.encode()).hexdigest(), received_at=sa.func.now(), state=PENDING,
                attempts=0, updated_at=sa.func.now(),
            ))  # fmt: skip
    postings, expected = [], []
    for key, index, style in deliveries:
        content = _CONTENTS[index]
        text = _TEXTS[style](content)
        postings.append(dict(message_id=prefix + key, event_type=CREATE, business_key="FN1", order_code="FN1",
                             payload=json.loads(text), payload_json=text))  # fmt: skip
        if key not in first:
            first[key] = _canonical(content)
            expected.append("stored")
        else:
            expected.append("duplicate" if first[key] == _canonical(content) else "conflict")

    answers = ledger.record_postings(postings) if batched else [ledger.record_postings([p])[0] for p in postings]

    assert answers == expected
    kept = {row["message_id"]: _canonical(json.loads(row["payload"])) for row in ledger.postings()}
    assert {key: kept[prefix + key] for key in first} == first  # the first content stays, never overwritten


def test_a_batch_of_postings_is_stored_as_sqlalchemy_stores_each_row(ledger_url):
    """record_postings sends its multi-row insert as driver SQL (the inbox's hot path): every column,
    timestamps included, must read back exactly as a row SQLAlchemy's own insert wrote with the same values."""
    ledger = Ledger(ledger_url)
    batch = [
        dict(message_id=str(i), event_type=CREATE, business_key=f"FN{i}", order_code=f"FN{i}", payload={"messageId": i},
             payload_json=f'{{"messageId": {i}}}')
        for i in (1, 2, 3)
    ]  # fmt: skip
    assert ledger.record_postings(batch) == ["stored"] * 3
    table = sa.table("inbox_message", *(sa.column(name) for name in ("message_id", "received_at", "updated_at")))
    with ledger.engine.begin() as conn:
        stored = conn.execute(sa.select(inbox_message).where(inbox_message.c.message_id == "2")).one()._asdict()
        del stored["id"]
        conn.execute(sa.insert(inbox_message).values({**stored, "message_id": "reference"}))
        # The timestamps as the database holds them (text on SQLite), not as the column type reads them back.
        as_stored = conn.execute(
            sa.select(table.c.message_id, sa.cast(table.c.received_at, sa.Text), sa.cast(table.c.updated_at, sa.Text))
        ).all()
        rows = {row.message_id: row._asdict() for row in conn.execute(sa.select(inbox_message))}
    raw = {message_id: (received, updated) for message_id, received, updated in as_stored}
    assert raw["2"] == raw["reference"] and raw["1"] == raw["2"]  # one timestamp per batch, in SQLAlchemy's format
    assert {**rows["2"], "id": None, "message_id": "reference"} == {**rows["reference"], "id": None}
    assert rows["2"]["payload"] == '{"messageId": 2}' and rows["2"]["state"] == PENDING and rows["2"]["attempts"] == 0


def test_claim_returns_the_same_batch_again_and_never_to_another_batch(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 5)
    _store(ledger, 2, event_type="OUTWARD_ORDER_CANCEL", start=100)
    first = ledger.claim_postings(event_types=[CREATE], batch_id="run-1", limit=3)
    assert [p.message_id for p in first] == ["1", "2", "3"]
    # A retried claim task gets its own batch back (plus nothing new beyond the limit).
    again = ledger.claim_postings(event_types=[CREATE], batch_id="run-1", limit=0)
    assert [p.message_id for p in again] == ["1", "2", "3"]
    other = ledger.claim_postings(event_types=[CREATE], batch_id="run-2", limit=10)
    assert [p.message_id for p in other] == ["4", "5"]
    assert ledger.claim_postings(event_types=[CREATE], batch_id="run-3") == []


def test_expired_lease_is_reclaimed_and_released_posting_is_retried(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 2)
    ledger.claim_postings(event_types=[CREATE], batch_id="crashed", lease=timedelta(seconds=-1))
    ledger.claim_postings(event_types=[CREATE], batch_id="crashed2", limit=0)  # nothing new, lease still expired
    reclaimed = ledger.claim_postings(event_types=[CREATE], batch_id="next")
    assert [p.message_id for p in reclaimed] == ["1", "2"]
    ledger.release_posting("1", error="ERP unavailable")
    ledger.finish_posting("2", outcome="booked")
    states = {r["message_id"]: (r["state"], r["attempts"], r["last_error"]) for r in ledger.postings()}
    assert states == {"1": (PENDING, 1, "ERP unavailable"), "2": (DONE, 0, None)}
    retry = ledger.claim_postings(event_types=[CREATE], batch_id="after")
    assert [(p.message_id, p.attempts) for p in retry] == [("1", 1)]


def _leases(ledger: Ledger) -> dict[str, tuple[str, str | None, object]]:
    return {r["message_id"]: (r["state"], r["batch_id"], r["lease_until"]) for r in ledger.postings()}


def test_renewing_a_lease_keeps_the_postings_the_batch_holds_from_other_claimers(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 3)
    ledger.claim_postings(event_types=[CREATE], batch_id="live", lease=timedelta(seconds=-1))  # lease already over
    ledger.finish_posting("3", outcome="booked", batch_id="live")
    assert ledger.renew_lease("live", timedelta(minutes=5)) == 2  # the two it still holds, not the finished one
    assert ledger.claim_postings(event_types=[CREATE], batch_id="other") == []
    renewed = _leases(ledger)
    assert {m: (state, batch) for m, (state, batch, _) in renewed.items()} == {
        "1": (CLAIMED, "live"), "2": (CLAIMED, "live"), "3": (DONE, "live")
    }
    assert renewed["3"][2] is None
    # A lease is never shortened (a task configured with a shorter lease renews nothing).
    assert ledger.renew_lease("live", timedelta(seconds=1)) == 0
    assert _leases(ledger) == renewed


def test_a_dead_batch_cannot_renew_postings_another_batch_took_over(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 2)
    ledger.claim_postings(event_types=[CREATE], batch_id="dead", lease=timedelta(seconds=-1))
    assert [p.message_id for p in ledger.claim_postings(event_types=[CREATE], batch_id="next")] == ["1", "2"]
    taken_over = _leases(ledger)
    assert ledger.renew_lease("dead", timedelta(minutes=5)) == 0
    assert _leases(ledger) == taken_over and {batch for _, batch, _ in taken_over.values()} == {"next"}


def test_a_retried_claim_renews_the_lease_of_what_the_batch_already_holds(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 2)
    ledger.claim_postings(event_types=[CREATE], batch_id="run-1", limit=1, lease=timedelta(seconds=-1))
    again = ledger.claim_postings(event_types=[CREATE], batch_id="run-1", limit=0, lease=timedelta(minutes=5))
    assert [p.message_id for p in again] == ["1"]
    assert [p.message_id for p in ledger.claim_postings(event_types=[CREATE], batch_id="run-2")] == ["2"]


@pytest.mark.parametrize("workers", [2, 4], ids=["2-workers", "4-workers"])
def test_concurrent_claims_never_hand_out_the_same_posting(ledger_url, workers):
    total = 120
    ledger = Ledger(ledger_url)
    _store(ledger, total)
    barrier = threading.Barrier(workers)
    claimed: dict[int, list[str]] = {w: [] for w in range(workers)}
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            mine = Ledger(ledger_url)
            barrier.wait()
            while True:
                batch = mine.claim_postings(event_types=[CREATE], batch_id=f"worker-{w}-{len(claimed[w])}", limit=7)
                new = [p.message_id for p in batch if p.message_id not in claimed[w]]
                if not new:
                    return
                claimed[w].extend(new)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    everything = [m for ids in claimed.values() for m in ids]
    assert len(everything) == len(set(everything)) == total
    assert all(r["state"] == CLAIMED for r in ledger.postings())


def test_dead_letter_is_recorded_once_per_problem(ledger_url):
    ledger = Ledger(ledger_url)
    assert ledger.record_dead_letter(stage="order_posting", reason="Ajio PO number missing", message_id="9")
    assert not ledger.record_dead_letter(stage="order_posting", reason="Ajio PO number missing", message_id="9")
    assert ledger.record_dead_letter(stage="order_posting", reason="another reason", message_id="9")
    assert [d["reason"] for d in ledger.dead_letters("order_posting")] == ["Ajio PO number missing", "another reason"]


def test_order_registration_keeps_the_first_create(ledger_url):
    ledger = Ledger(ledger_url)
    first = ledger.register_order(
        order_code="FN1", po_number="PO1", state="ready_to_book", create_message_id="1",
        lines=[{"sku": "A", "quantity": 2}], total_amount=100, erp_request={"orderCode": "FN1"},
    )
    second = ledger.register_order(
        order_code="FN1", po_number="PO2", state="ready_to_book", create_message_id="2",
        lines=[], total_amount=0, erp_request=None,
    )
    assert first == second
    assert second["create_message_id"] == "1" and second["po_number"] == "PO1"
    assert second["lines"] == [{"sku": "A", "quantity": 2}]


def test_cursor_round_trip(ledger_url):
    ledger = Ledger(ledger_url)
    assert ledger.get_cursor("einvoice", "0") == "0"
    ledger.set_cursor("einvoice", "41")
    ledger.set_cursor("einvoice", "42")
    assert ledger.get_cursor("einvoice") == "42"


def test_claimed_posting_state_survives_a_new_engine(sqlite_ledger_url):
    """Durability: what one process wrote, a fresh process (engine) reads."""
    from omni_erp.ledger import engine as ledger_engine

    ledger = Ledger(sqlite_ledger_url)
    _store(ledger, 1)
    ledger.finish_posting("1", state=DEAD, outcome="dead_letter", error="why")
    ledger_engine.dispose_all()
    row = Ledger(sqlite_ledger_url).postings()[0]
    assert (row["state"], row["outcome"], row["last_error"]) == (DEAD, "dead_letter", "why")


# --- schema version 2: documents, shipments, return orders, manual settlement -----------------


def test_a_version_1_ledger_is_migrated_in_place(ledger_url):
    """A ledger created by the first release (no v2 tables, no cancel_route column) upgrades on first use."""
    from omni_erp.ledger import engine as ledger_engine
    from omni_erp.ledger import tables as t

    old_orders = sa.Table(
        "ajio_order", sa.MetaData(),
        *[c.copy() for c in t.ajio_order.columns if c.name not in {"cancel_route", "closed_at"}],
    )
    raw = sa.create_engine(ledger_url)
    with raw.begin() as conn:
        t.schema_version.create(conn)
        for table in (t.inbox_message, t.outbound_call, t.dead_letter, t.sync_cursor):
            table.create(conn)
        old_orders.create(conn)
        conn.execute(t.schema_version.insert().values(version=1, applied_at=sa.func.now()))
        conn.execute(old_orders.insert().values(order_code="FN1", state="booked", lines="[]", total_amount=1,
                                                created_at=sa.func.now(), updated_at=sa.func.now()))
    raw.dispose()
    ledger_engine.dispose_all()

    ledger = Ledger(ledger_url)
    with ledger.engine.connect() as conn:
        # v3: ledger_meta with the identity; v4: RMS tables; v5: SLA breaches; v6: alert runs and incidents
        assert current_version(conn) == SCHEMA_VERSION == 6
        assert {"erp_document", "shipment", "return_order", "manual_settlement", "rms_report", "rms_return", "sla_breach",
                "alert_run", "alert_incident"} <= set(
            sa.inspect(conn).get_table_names()
        )
    ledger.update_order("FN1", cancel_route="not_booked")
    assert ledger.get_order("FN1")["cancel_route"] == "not_booked"


def test_documents_are_recorded_once_per_number_with_aware_times(ledger_url):
    ledger = Ledger(ledger_url)
    doc = dict(doc_type="invoice", doc_number="RB2627/000001", order_code="FN1", related_code=None, seq=4,
               payload={"irn": "x"}, state="ready_to_upload")
    assert ledger.record_document(**doc)
    assert not ledger.record_document(**{**doc, "payload": {"irn": "other"}})
    ledger.update_document("invoice", "RB2627/000001", state="uploaded", upload_attempts=1)
    stored = ledger.get_document("invoice", "RB2627/000001")
    assert stored["payload"] == {"irn": "x"} and stored["state"] == "uploaded"
    assert stored["created_at"].tzinfo is not None
    assert [d["doc_number"] for d in ledger.documents("invoice", states=["uploaded"])] == ["RB2627/000001"]


def test_shipments_are_deduplicated_by_shipment_code(ledger_url):
    ledger = Ledger(ledger_url)
    items = [{"sku": "A", "quantity": 1}]
    assert ledger.record_shipment(shipment_code="SHP-1", order_code="FN1", message_id="1", items=items)
    assert not ledger.record_shipment(shipment_code="SHP-1", order_code="FN1", message_id="2", items=items)
    assert ledger.record_shipment(shipment_code="SHP-2", order_code="FN1", message_id="2", items=items)
    assert [s["shipment_code"] for s in ledger.order_shipments("FN1")] == ["SHP-1", "SHP-2"]


def test_return_orders_and_manual_settlements(ledger_url):
    ledger = Ledger(ledger_url)
    first = ledger.register_return_order(return_order_code="RTN-1", order_code="FN1", kind="CUSTOMER_RETURN",
                                         state="ready_to_book", lines=[{"sku": "A", "quantity": 1}], erp_request={"a": 1})
    again = ledger.register_return_order(return_order_code="RTN-1", order_code="FN1", kind="CUSTOMER_RETURN",
                                         state="ready_to_book", lines=[], erp_request=None)
    assert first == again and again["lines"] == [{"sku": "A", "quantity": 1}]
    item = dict(return_order_code="RTN-1", item_code="RTN-1-2", order_code="FN1", sku="A", qc_status="FAIL",
                qc_reason="STAIN_DAMAGE", reason="QC failed")
    assert ledger.record_manual_settlement(**item)
    assert not ledger.record_manual_settlement(**item)
    assert [m["item_code"] for m in ledger.manual_settlements("RTN-1")] == ["RTN-1-2"]


def test_cursor_only_moves_forward(ledger_url):
    ledger = Ledger(ledger_url)
    assert ledger.advance_cursor("einvoice", 10) == 10
    assert ledger.advance_cursor("einvoice", 7) == 10
    assert ledger.get_cursor("einvoice") == "10"


class _CrashBetweenWrites(Exception):
    """Stands for a worker dying between two ledger writes of one state change."""


def test_a_transaction_records_every_verb_or_none(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 1)
    with pytest.raises(_CrashBetweenWrites), ledger.transaction():
        ledger.record_dead_letter(stage="order_posting", reason="bad PO", message_id="1", business_key="FN1")
        ledger.finish_posting("1", state=DEAD, outcome="dead_letter", error="bad PO")
        raise _CrashBetweenWrites
    assert ledger.dead_letters() == []
    assert ledger.postings()[0]["state"] == PENDING
    # An insert that meets its natural key inside a transaction must not abort it (PostgreSQL would).
    with ledger.transaction():
        assert ledger.record_posting(
            message_id="1", event_type=CREATE, business_key="FN1", order_code="FN1", payload={"messageId": 1}
        ) == "duplicate"
        ledger.dead_letter_posting("1", stage="order_posting", reason="bad PO", business_key="FN1")
    [row] = ledger.postings()
    assert (row["state"], row["outcome"], row["last_error"]) == (DEAD, "dead_letter", "bad PO")
    assert [d["reason"] for d in ledger.dead_letters()] == ["bad PO"]
