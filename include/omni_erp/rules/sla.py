"""Business SLA rules (issue 10 item 4): which orders and documents breach a promise the business cares about.

Five rules, each a pure function of ledger rows and the current time; the reconciliation DAG evaluates them
and alerts each breach once (``plan_alerts``: the ledger's ``sla_breach`` rows say what was alerted already).

* ``NO_EINVOICE_UPLOADED`` - an order received for booking has no e-invoice at Omni after a configurable time
  (default 30 minutes): the warehouse cannot pick it until Omni has the invoice (domain.md section 1).
* ``UPLOAD_REJECTED`` - Omni refused an invoice or credit note upload (4xx) and it is still refused.
* ``CANCELLATION_NEAR_IRN_WINDOW`` - a cancellation is waiting while its order's IRN nears the end of the
  24-hour window in which the IRN can still be cancelled (domain.md section 6); after it, F3 must raise a
  credit note instead.
* ``IRP_LIMIT_NEAR`` - an e-invoice or credit note the ERP has not registered at the IRP yet nears the IRP's
  30-day reporting limit (domain.md section 6): after it the IRP refuses the document for good.
* ``DEAD_LETTERED`` - postings and documents dead-lettered since the last alert.

Row shapes (dicts, as ``omni_erp.ledger.queries`` returns them) are given in each function's docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from omni_erp.states import DOC_UPLOAD_FAILED, DOC_UPLOADED, ORDER_BOOKED, ORDER_INVOICED, ORDER_READY

NO_EINVOICE_UPLOADED = "no_einvoice_uploaded"
UPLOAD_REJECTED = "upload_still_rejected"
CANCELLATION_NEAR_IRN_WINDOW = "cancellation_near_irn_window"
IRP_LIMIT_NEAR = "irp_reporting_limit_near"
DEAD_LETTERED = "dead_lettered"
RULES = (NO_EINVOICE_UPLOADED, UPLOAD_REJECTED, CANCELLATION_NEAR_IRN_WINDOW, IRP_LIMIT_NEAR, DEAD_LETTERED)

IRN_CANCEL_WINDOW = timedelta(hours=24)  # GST: an IRN can be cancelled only within 24 hours (domain.md section 6)
IRP_REPORTING_LIMIT = timedelta(days=30)  # GST: no document reported to the IRP later than 30 days after its date

# Order states in which the order has been received for booking but its e-invoice may not be at Omni yet.
AWAITING_UPLOAD_STATES = frozenset({ORDER_READY, ORDER_BOOKED, ORDER_INVOICED})

# Title and what to do, per rule: the alert carries both (the README explains each at more length).
TITLES = {
    NO_EINVOICE_UPLOADED: "Orders with no e-invoice at Omni: the warehouse cannot pick them",
    UPLOAD_REJECTED: "Uploads Omni rejected and still rejected",
    CANCELLATION_NEAR_IRN_WINDOW: "Cancellations waiting while the IRN's 24-hour cancel window closes",
    IRP_LIMIT_NEAR: "E-invoices / credit notes nearing the IRP's 30-day reporting limit",
    DEAD_LETTERED: "Postings or documents dead-lettered since the last alert",
}
ACTIONS = {
    NO_EINVOICE_UPLOADED: "Check the order's reason: ERP down or refusing the order (F1), no e-invoice from the ERP yet "
    "(ask the ERP team about its IRN queue), or the invoice not matched/uploaded (F2 run log, erp_document.reason).",
    UPLOAD_REJECTED: "Read erp_document.reason (Increff's code and message), fix the data in the ERP or the mapping, "
    "then trigger erp_invoice_upload / omni_return_credit_note with retry_failed.",
    CANCELLATION_NEAR_IRN_WINDOW: "Make omni_order_cancellation run now (ERP reachable? posting deferred? see its last_error); "
    "after the window F3 raises a credit note kept in the ERP instead of cancelling the IRN.",
    IRP_LIMIT_NEAR: "Have the ERP register these documents at the IRP now; after 30 days the IRP refuses them and the "
    "sale must be settled another way with Ajio and the tax team.",
    DEAD_LETTERED: "Read dead_letter.reason for each; fix the cause (mapping, ERP master data, Omni data) and "
    "re-deliver or reprocess; mark the row resolved (resolved_at) once handled.",
}


@dataclass(frozen=True)
class SlaSettings:
    """Thresholds of the rules.

    :param einvoice_upload_after: how long an order may wait for its e-invoice at Omni (default 30 minutes).
    :param irn_cancel_warning: alert when an IRN has at most this long left of its 24-hour window.
    :param irp_limit_warning: alert when a document is at most this long from the IRP's 30-day limit.
    """

    einvoice_upload_after: timedelta = timedelta(minutes=30)
    irn_cancel_warning: timedelta = timedelta(hours=4)
    irp_limit_warning: timedelta = timedelta(days=5)

    def __post_init__(self) -> None:
        for name in ("einvoice_upload_after", "irn_cancel_warning", "irp_limit_warning"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be a positive duration, got {getattr(self, name)}")
        if self.irn_cancel_warning >= IRN_CANCEL_WINDOW or self.irp_limit_warning >= IRP_REPORTING_LIMIT:
            raise ValueError("a warning must start inside its window (less than 24 hours / 30 days)")


@dataclass(frozen=True)
class Breach:
    """One subject breaching one rule.

    :param rule: one of ``RULES``.
    :param subject: what breaches, unique within the rule (an order code, ``invoice:<number>``, ``dead_letter:<id>``).
    :param order_code: the Ajio order concerned, when there is one.
    :param detail: one line for the alert and the report.
    """

    rule: str
    subject: str
    order_code: str | None
    detail: str


@dataclass(frozen=True)
class AlertPlan:
    """What to alert and record after one evaluation.

    :param new: per rule, breaches not alerted before (each rule with any gets one alert).
    :param still_open: per rule, how many breaches alerted earlier still breach (not alerted again).
    :param cleared: per rule, subjects alerted earlier that no longer breach (closed, so a new breach alerts again).
    """

    new: dict[str, list[Breach]] = field(default_factory=dict)
    still_open: dict[str, int] = field(default_factory=dict)
    cleared: dict[str, set[str]] = field(default_factory=dict)


def _age(at: datetime, since: datetime) -> str:
    """How long from ``since`` to ``at``, for people (``_duration``)."""
    return _duration(at - since)


def _duration(span: timedelta) -> str:
    """A duration for people: ``45 min``, ``5.5 h``, ``3.2 days``."""
    seconds = span.total_seconds()
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def orders_without_uploaded_einvoice(
    orders: Iterable[Mapping[str, Any]], *, at: datetime, after: timedelta
) -> list[Breach]:
    """Orders received for booking longer than ``after`` ago whose e-invoice is not uploaded to Omni.

    :param orders: ``order_code``, ``state``, ``created_at`` (when F1 registered the order), ``invoice_state``
        (the e-invoice's ``erp_document.state``, None when the ERP has published none) and ``reason`` (why it
        waits, may be None).
    """
    breaches = []
    for order in orders:
        if order["state"] not in AWAITING_UPLOAD_STATES or order.get("invoice_state") == DOC_UPLOADED:
            continue
        if at - order["created_at"] < after:
            continue
        reason = order.get("reason") or (
            "waiting for the ERP's e-invoice" if order.get("invoice_state") is None else f"e-invoice {order['invoice_state']}"
        )
        breaches.append(
            Breach(NO_EINVOICE_UPLOADED, order["order_code"], order["order_code"],
                   f"{order['order_code']}: {order['state']} for {_age(at, order['created_at'])}; {reason}")
        )
    return breaches


def uploads_still_rejected(documents: Iterable[Mapping[str, Any]]) -> list[Breach]:
    """Invoices and credit notes whose last upload Omni refused (state ``upload_failed``).

    :param documents: ``doc_type``, ``doc_number``, ``order_code``, ``state``, ``reason``.
    """
    return [
        Breach(UPLOAD_REJECTED, f"{d['doc_type']}:{d['doc_number']}", d.get("order_code"),
               f"{d['doc_type']} {d['doc_number']} (order {d.get('order_code') or '-'}): {d.get('reason') or 'refused'}")
        for d in documents
        if d["state"] == DOC_UPLOAD_FAILED
    ]


def cancellations_near_irn_window(
    cancellations: Iterable[Mapping[str, Any]], *, at: datetime, warning: timedelta, window: timedelta = IRN_CANCEL_WINDOW
) -> list[Breach]:
    """Cancellations not processed yet for e-invoiced orders whose IRN has ``warning`` or less left of ``window``.

    A window already closed is no longer a breach of this rule: F3 then raises a credit note (domain.md decision 5).

    :param cancellations: ``order_code``, ``order_state``, ``invoiced_at`` (the IRN acknowledgement, may be None),
        ``last_error`` (why the posting waits, may be None).
    """
    breaches = []
    for c in cancellations:
        if c["order_state"] != ORDER_INVOICED or c.get("invoiced_at") is None:
            continue
        left = c["invoiced_at"] + window - at
        if timedelta(0) < left <= warning:
            why = f"; waiting because: {c['last_error']}" if c.get("last_error") else ""
            breaches.append(
                Breach(CANCELLATION_NEAR_IRN_WINDOW, c["order_code"], c["order_code"],
                       f"{c['order_code']}: IRN cancel window closes in {_duration(left)}{why}")
            )
    return breaches


def documents_near_irp_limit(
    documents: Iterable[Mapping[str, Any]], *, at: datetime, warning: timedelta, limit: timedelta = IRP_REPORTING_LIMIT
) -> list[Breach]:
    """Documents not yet registered at the IRP that are ``warning`` or less from (or past) the reporting limit.

    :param documents: ``kind`` (``invoice`` or ``credit_note``), ``key`` (what identifies the expected document:
        an order code, a return order code), ``order_code``, ``document_date`` (the earliest date the document
        can carry: when the order or return was booked) and ``registered`` (True once the ERP published it with an IRN).
    """
    breaches = []
    for d in documents:
        if d.get("registered"):
            continue
        deadline = d["document_date"] + limit
        left = deadline - at
        if left > warning:
            continue
        when = f"limit passed {_duration(-left)} ago" if left <= timedelta(0) else f"{_duration(left)} left"
        breaches.append(
            Breach(IRP_LIMIT_NEAR, f"{d['kind']}:{d['key']}", d.get("order_code"),
                   f"{d['kind'].replace('_', ' ')} for {d['key']}: not at the IRP {_age(at, d['document_date'])} after "
                   f"booking; {when}")
        )
    return breaches


def dead_letters_to_alert(dead_letters: Iterable[Mapping[str, Any]]) -> list[Breach]:
    """Every unresolved dead letter is a breach; ``plan_alerts`` alerts only those not alerted before.

    :param dead_letters: ``id``, ``stage``, ``business_key``, ``message_id``, ``reason``, ``resolved_at``.
    """
    return [
        Breach(DEAD_LETTERED, f"dead_letter:{d['id']}", d.get("business_key"),
               f"{d['stage']} {d.get('business_key') or d.get('message_id') or '-'}: {d['reason']}")
        for d in dead_letters
        if d.get("resolved_at") is None
    ]


def plan_alerts(breaches: Iterable[Breach], alerted: Mapping[str, Iterable[str]]) -> AlertPlan:
    """Split this evaluation's breaches into new ones (to alert) and ones alerted before; find the cleared.

    :param breaches: every breach found now.
    :param alerted: per rule, the subjects alerted earlier and not cleared (``sla_breach`` rows).
    """
    plan = AlertPlan()
    current: dict[str, set[str]] = {}
    for breach in breaches:
        subjects = current.setdefault(breach.rule, set())
        if breach.subject in subjects:
            continue  # the same subject twice in one evaluation is one breach
        subjects.add(breach.subject)
        if breach.subject in set(alerted.get(breach.rule, ())):
            plan.still_open[breach.rule] = plan.still_open.get(breach.rule, 0) + 1
        else:
            plan.new.setdefault(breach.rule, []).append(breach)
    for rule, subjects in alerted.items():
        gone = set(subjects) - current.get(rule, set())
        if gone:
            plan.cleared[rule] = gone
    return plan


MAX_LINES_PER_ALERT = 50  # a long outage can breach thousands of orders; the report has them all


def alert_message(rule: str, new: list[Breach], still_open: int = 0) -> dict[str, Any]:
    """The alert for one rule's new breaches: title, count, order codes, one line per breach, what to do."""
    lines = [b.detail for b in new[:MAX_LINES_PER_ALERT]]
    if len(new) > MAX_LINES_PER_ALERT:
        lines.append(f"... and {len(new) - MAX_LINES_PER_ALERT} more (see the reconciliation report)")
    earlier = f" ({still_open} alerted earlier still open)" if still_open else ""
    text = f"{TITLES[rule]}: {len(new)} new{earlier}\n" + "\n".join(lines) + f"\nWhat to do: {ACTIONS[rule]}"
    return {
        "text": text,  # what chat webhooks (Slack, Mattermost, Teams) display
        "kind": "sla_breach",
        "rule": rule,
        "title": TITLES[rule],
        "count": len(new),
        "still_open_from_earlier_alerts": still_open,
        "order_codes": sorted({b.order_code for b in new if b.order_code}),
        "detail": "\n".join(lines),
        "what_to_do": ACTIONS[rule],
    }


def evaluate(
    *,
    at: datetime,
    settings: SlaSettings,
    awaiting_upload: Iterable[Mapping[str, Any]],
    rejected_uploads: Iterable[Mapping[str, Any]],
    pending_cancellations: Iterable[Mapping[str, Any]],
    unregistered_documents: Iterable[Mapping[str, Any]],
    dead_letters: Iterable[Mapping[str, Any]],
) -> list[Breach]:
    """Every breach of every rule now, in ``RULES`` order."""
    return [
        *orders_without_uploaded_einvoice(awaiting_upload, at=at, after=settings.einvoice_upload_after),
        *uploads_still_rejected(rejected_uploads),
        *cancellations_near_irn_window(pending_cancellations, at=at, warning=settings.irn_cancel_warning),
        *documents_near_irp_limit(unregistered_documents, at=at, warning=settings.irp_limit_warning),
        *dead_letters_to_alert(dead_letters),
    ]
