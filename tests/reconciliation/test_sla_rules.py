"""The business SLA rules (omni_erp.rules.sla): time windows as properties, dedupe planning, the alert's content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.rules import sla
from omni_erp.states import (
    DOC_CREDIT_NOTE,
    DOC_INVOICE,
    DOC_READY,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_INVOICED,
    ORDER_READY,
)

AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40))
positive = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=23))
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(
    age=ages,
    after=st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=2)),
    state=st.sampled_from([ORDER_READY, ORDER_BOOKED, ORDER_INVOICED, ORDER_CANCELLED, ORDER_COMPLETED]),
    invoice_state=st.sampled_from([None, DOC_READY, DOC_UPLOAD_FAILED, DOC_UPLOADED]),
)
def test_an_order_breaches_the_upload_sla_exactly_when_it_waits_longer_than_allowed_without_an_uploaded_invoice(
    age, after, state, invoice_state
):
    order = {"order_code": "FN1", "state": state, "created_at": AT - age, "invoice_state": invoice_state, "reason": None}

    breaches = sla.orders_without_uploaded_einvoice([order], at=AT, after=after)

    expected = state in (ORDER_READY, ORDER_BOOKED, ORDER_INVOICED) and invoice_state != DOC_UPLOADED and age >= after
    assert bool(breaches) == expected
    if expected:
        [breach] = breaches
        assert (breach.rule, breach.subject, breach.order_code) == (sla.NO_EINVOICE_UPLOADED, "FN1", "FN1")


@FAST
@given(age=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)), warning=positive,
       state=st.sampled_from([ORDER_INVOICED, ORDER_BOOKED, ORDER_CANCELLED, None]))
def test_a_waiting_cancellation_breaches_only_while_its_irn_window_is_closing_and_not_yet_closed(age, warning, state):
    cancellation = {"order_code": "FN2", "order_state": state, "invoiced_at": AT - age, "last_error": "ERP down"}

    breaches = sla.cancellations_near_irn_window([cancellation], at=AT, warning=warning)

    left = timedelta(hours=24) - age
    assert bool(breaches) == (state == ORDER_INVOICED and timedelta(0) < left <= warning)
    if breaches:
        assert "ERP down" in breaches[0].detail


@FAST
@given(age=ages, warning=st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=29)),
       registered=st.booleans(), kind=st.sampled_from([DOC_INVOICE, DOC_CREDIT_NOTE]))
def test_an_unregistered_document_breaches_from_the_warning_on_and_after_the_30_day_limit(age, warning, registered, kind):
    document = {"kind": kind, "key": "R1", "order_code": "FN3", "document_date": AT - age, "registered": registered}

    breaches = sla.documents_near_irp_limit([document], at=AT, warning=warning)

    assert bool(breaches) == (not registered and age >= timedelta(days=30) - warning)
    if breaches:
        assert breaches[0].subject == f"{kind}:R1"
        assert ("limit passed" in breaches[0].detail) == (age >= timedelta(days=30))


def test_a_missing_irn_time_or_ack_never_breaches_and_rejected_uploads_and_dead_letters_are_listed():
    assert sla.cancellations_near_irn_window(
        [{"order_code": "FN", "order_state": ORDER_INVOICED, "invoiced_at": None}], at=AT, warning=timedelta(hours=4)
    ) == []
    documents = [
        {"doc_type": DOC_INVOICE, "doc_number": "INV1", "order_code": "FN1", "state": DOC_UPLOAD_FAILED,
         "reason": "BAD_DATA: invoiceDate must be a zoned date-time"},
        {"doc_type": DOC_INVOICE, "doc_number": "INV2", "order_code": "FN2", "state": DOC_UPLOADED, "reason": None},
    ]
    [rejected] = sla.uploads_still_rejected(documents)
    assert rejected.subject == "invoice:INV1" and "BAD_DATA" in rejected.detail
    dead = [
        {"id": 7, "stage": "order_posting", "business_key": "FN9", "message_id": "9", "reason": "no Ajio PO", "resolved_at": None},
        {"id": 8, "stage": "inbox", "business_key": None, "message_id": "10", "reason": "bad", "resolved_at": AT},
    ]
    assert [(b.subject, b.order_code) for b in sla.dead_letters_to_alert(dead)] == [("dead_letter:7", "FN9")]


subjects = st.sets(st.sampled_from([f"FN{n}" for n in range(12)]), max_size=12)


@FAST
@given(current=st.dictionaries(st.sampled_from(sla.RULES), subjects, max_size=5),
       alerted=st.dictionaries(st.sampled_from(sla.RULES), subjects, max_size=5))
def test_plan_alerts_alerts_each_breach_once_and_closes_what_stopped_breaching(current, alerted):
    breaches = [sla.Breach(rule, s, s, f"{s} breaches {rule}") for rule, ss in current.items() for s in sorted(ss)]

    plan = sla.plan_alerts(breaches + breaches[:3], alerted)  # a subject listed twice is still one breach

    for rule in sla.RULES:
        now_breaching, before = current.get(rule, set()), alerted.get(rule, set())
        assert {b.subject for b in plan.new.get(rule, [])} == now_breaching - before
        assert plan.still_open.get(rule, 0) == len(now_breaching & before)
        assert plan.cleared.get(rule, set()) == before - now_breaching
    # After recording what was alerted and closing what cleared, the same breaches alert nothing new.
    recorded = {rule: (alerted.get(rule, set()) - plan.cleared.get(rule, set())) | {b.subject for b in plan.new.get(rule, [])}
                for rule in sla.RULES}
    again = sla.plan_alerts(breaches, recorded)
    assert again.new == {} and again.cleared == {}


def test_one_alert_names_every_order_and_says_what_to_do_and_is_capped_for_a_long_outage():
    new = [sla.Breach(sla.NO_EINVOICE_UPLOADED, f"FN{n:03d}", f"FN{n:03d}", f"FN{n:03d}: booked for 45 min") for n in range(60)]

    message = sla.alert_message(sla.NO_EINVOICE_UPLOADED, new, still_open=4)

    assert message["count"] == 60 and message["still_open_from_earlier_alerts"] == 4
    assert message["order_codes"] == [f"FN{n:03d}" for n in range(60)]  # every code, even past the line cap
    lines = message["detail"].splitlines()
    assert len(lines) == sla.MAX_LINES_PER_ALERT + 1 and lines[-1].startswith("... and 10 more")
    assert message["title"] == sla.TITLES[sla.NO_EINVOICE_UPLOADED] and message["what_to_do"]


@pytest.mark.parametrize(
    "changes",
    [{"einvoice_upload_after": timedelta(0)}, {"irn_cancel_warning": timedelta(hours=24)},
     {"irp_limit_warning": timedelta(days=-1)}, {"irp_limit_warning": timedelta(days=30)}],
)
def test_thresholds_outside_their_window_are_refused(changes):
    with pytest.raises(ValueError, match="must"):
        sla.SlaSettings(**changes)
