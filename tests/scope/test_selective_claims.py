"""Selective claims (issue 10.5, 10.6) on SQLite and PostgreSQL: a claim with ``order_codes`` and/or a ``window``
is exactly a filter over the postings in their mixed states, replays the dead-lettered ones it takes, and a
second claim of the same scope takes nothing new. ``select_postings`` (a dry run's batch) is the same filter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from omni_erp.ledger import Ledger
from omni_erp.ledger import tables as t
from omni_erp.ledger.repo import REPLAYED
from omni_erp.states import CLAIMED, DEAD, DONE, IGNORED, PENDING, STAGE_INBOX, STAGE_ORDER_POSTING
from omni_erp.timeutil import IST

CREATE, CANCEL = "OUTWARD_ORDER_CREATE", "OUTWARD_ORDER_CANCEL"
ORDERS = [f"FN{n:010d}" for n in range(5)]
RETURNS = [f"RET-{n}" for n in range(5)]  # a return posting's business key differs from its order code
STATES = ["pending", "claimed_live", "claimed_expired", "done", "dead", "ignored"]
BASE = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spec:
    order: int
    own_key: bool  # business_key is the order code (else a return's code)
    state: str
    hour: int  # received at BASE + hour
    attempts: int
    event_type: str


SPECS = st.lists(
    st.builds(
        Spec,
        order=st.integers(0, 4),
        own_key=st.booleans(),
        state=st.sampled_from(STATES),
        hour=st.integers(0, 9),
        attempts=st.integers(0, 2),
        event_type=st.sampled_from([CREATE, CREATE, CANCEL]),
    ),
    max_size=14,
)
SCOPES = st.tuples(
    st.lists(st.sampled_from(ORDERS + RETURNS), max_size=4, unique=True),
    st.none() | st.tuples(st.integers(0, 9), st.integers(1, 10)).filter(lambda w: w[0] < w[1]),
)


@pytest.fixture()
def ledger(ledger_url) -> Ledger:
    return Ledger(ledger_url)


def _store(ledger: Ledger, specs: list[Spec], now: datetime) -> None:
    """The postings of ``specs`` (message ids 1..n), each in its state, with a dead letter per dead one."""
    ledger.record_postings([
        dict(message_id=str(n), event_type=s.event_type, business_key=ORDERS[s.order] if s.own_key else RETURNS[s.order],
             order_code=ORDERS[s.order], payload={"messageId": n}, state=IGNORED if s.state == "ignored" else PENDING)
        for n, s in enumerate(specs, start=1)
    ])
    m = t.inbox_message
    with ledger.engine.begin() as conn:
        for n, s in enumerate(specs, start=1):
            values = {"received_at": BASE + timedelta(hours=s.hour), "attempts": s.attempts}
            if s.state.startswith("claimed"):
                lease = timedelta(hours=1) if s.state == "claimed_live" else -timedelta(minutes=1)
                values |= {"state": CLAIMED, "batch_id": "earlier-run", "lease_until": now + lease}
            elif s.state in ("done", "dead"):
                values |= {"state": DONE if s.state == "done" else DEAD, "outcome": s.state, "last_error": f"why {n}"}
            conn.execute(update(m).where(m.c.message_id == str(n)).values(**values))
    for n, s in enumerate(specs, start=1):
        if s.state == "dead":
            ledger.record_dead_letter(stage=STAGE_ORDER_POSTING, reason=f"why {n}", message_id=str(n), business_key=ORDERS[s.order])
            # Another delivery under the same id, refused by the inbox: not this posting's problem, never resolved.
            ledger.record_dead_letter(stage=STAGE_INBOX, reason="conflict", message_id=str(n))


def _expected(specs: list[Spec], codes: list[str], window: tuple[int, int] | None) -> list[str]:
    """Message ids a claim of CREATEs with this scope may take, in id order (the rules of ``run_scope``)."""
    selective = bool(codes) or window is not None
    taken = []
    for n, s in enumerate(specs, start=1):
        key = ORDERS[s.order] if s.own_key else RETURNS[s.order]
        claimable = s.state in ("pending", "claimed_expired") or (selective and s.state == "dead")
        in_orders = not codes or ORDERS[s.order] in codes or key in codes
        in_window = window is None or window[0] <= s.hour < window[1]
        if s.event_type == CREATE and claimable and in_orders and in_window:
            taken.append(str(n))
    return taken


def _rows(ledger: Ledger) -> dict[str, dict]:
    with ledger.engine.connect() as conn:
        return {r.message_id: dict(r._mapping) for r in conn.execute(select(t.inbox_message))}


def _letters(ledger: Ledger) -> list[dict]:
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(t.dead_letter).order_by(t.dead_letter.c.id))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=SPECS, scope=SCOPES, limit=st.integers(1, 15), page_size=st.integers(1, 4))
def test_a_claim_takes_exactly_the_scope_replays_its_dead_postings_and_a_second_claim_takes_nothing_new(
    ledger, specs, scope, limit, page_size
):
    with ledger.engine.begin() as conn:
        conn.execute(delete(t.dead_letter))
        conn.execute(delete(t.inbox_message))
    now = datetime.now(UTC)
    _store(ledger, specs, now)
    codes, hours = scope
    # The window as Airflow renders a backfill run's data interval (IST here): compared in UTC.
    window = None if hours is None else tuple((BASE + timedelta(hours=h)).astimezone(IST) for h in hours)
    expected = _expected(specs, codes, hours)
    first, rest = expected[:limit], expected[limit:]
    dead_before = {n for n, r in _rows(ledger).items() if r["state"] == DEAD}
    before = _rows(ledger)

    selected = ledger.select_postings(event_types=[CREATE], limit=limit, order_codes=codes, window=window)
    assert [p.message_id for p in selected] == first  # what a dry run shows is what the claim takes
    assert {p.message_id for p in selected if p.replayed} == set(first) & dead_before
    assert _rows(ledger) == before  # selecting is read only

    summary = ledger.claim_batch(
        event_types=[CREATE], batch_id="run-1", limit=limit, page_size=page_size, order_codes=codes, window=window
    )

    after = _rows(ledger)
    assert (summary.claimed, summary.replayed) == (len(first), len(set(first) & dead_before))
    assert {n for n, r in after.items() if r["batch_id"] == "run-1" and r["state"] == CLAIMED} == set(first)
    for n, row in after.items():
        if n not in first:
            assert row == before[n], f"posting {n} was not in scope but changed"
        elif n in dead_before:
            assert (row["attempts"], row["outcome"]) == (0, REPLAYED)
            assert row["last_error"].startswith("replayed by batch run-1") and row["last_error"].endswith(before[n]["last_error"])
    for letter in _letters(ledger):
        replayed = letter["message_id"] in first and letter["message_id"] in dead_before and letter["stage"] != STAGE_INBOX
        assert (letter["resolved_at"] is not None) == replayed, letter
    assert [p.message_id for p in ledger.iter_claimed_postings("run-1", [CREATE])] == first

    again = ledger.claim_batch(event_types=[CREATE], batch_id="run-2", limit=500, order_codes=codes, window=window)
    assert [p.message_id for p in ledger.claimed_postings("run-2")] == rest  # in id order
    assert again.claimed == len(rest)
    third = ledger.claim_batch(event_types=[CREATE], batch_id="run-3", limit=500, order_codes=codes, window=window)
    assert third.claimed == 0  # nothing new: the scope's postings are all held
    assert ledger.select_postings(event_types=[CREATE], order_codes=codes, window=window) == []
    done = {n for n, r in before.items() if r["state"] == DONE}
    assert all(_rows(ledger)[n] == before[n] for n in done)  # done postings are never taken


def test_claim_postings_replays_too_and_a_still_bad_replay_is_dead_lettered_again_with_its_letter_open(ledger):
    ledger.record_posting(message_id="7", event_type=CREATE, business_key="FN7", order_code="FN7", payload={"messageId": 7})
    ledger.claim_postings(event_types=[CREATE], batch_id="run-1")
    assert ledger.dead_letter_posting("7", stage=STAGE_ORDER_POSTING, reason="no Ajio PO", business_key="FN7", batch_id="run-1")
    assert ledger.claim_postings(event_types=[CREATE], batch_id="run-2") == []  # not selective: dead stays dead

    replayed = ledger.claim_postings(event_types=[CREATE], batch_id="run-3", order_codes=["FN7"])

    assert [(p.message_id, p.attempts, p.replayed) for p in replayed] == [("7", 0, True)]
    assert [d["resolved_at"] is not None for d in ledger.dead_letters()] == [True]
    # Still no PO: dead-lettered again with the same reason - the one letter is open again, not lost as a duplicate.
    assert ledger.dead_letter_posting("7", stage=STAGE_ORDER_POSTING, reason="no Ajio PO", business_key="FN7", batch_id="run-3")
    letters = ledger.dead_letters()
    assert len(letters) == 1 and letters[0]["resolved_at"] is None
    assert ledger.postings()[0]["state"] == DEAD
