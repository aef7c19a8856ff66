"""The demo's closing report: one reconciliation per flow, every order's path, and the invariants."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from omni_erp import states as s
from omni_erp.demo import plan as paths

WIDTH = 60


def _section(title: str, rows: list[tuple[str, Any]]) -> None:
    print(f"\n{title}")
    print("-" * 78)
    for label, value in rows:
        print(f"  {label:<{WIDTH}} {value:>8}")


def _write_calls(state: dict[str, Any]) -> Any:
    """What the ERP view counts as writes (``omni_erp.demo.views``); else the POSTs of a raw sandbox state."""
    if "write_calls" in state:
        return state["write_calls"]
    return sum(n for endpoint, n in state["request_counts"].items() if endpoint.startswith("POST"))


def path_results(plan: paths.Plan, ledger: Any, erp: dict[str, Any], *, credit_note_path: str = "erp") -> dict[str, list[bool]]:
    """Per planned path, one bool per order: did it end where that path leads (ledger and ERP agree)?

    :param plan: the generated orders and their paths.
    :param ledger: the ``Ledger`` the DAGs wrote.
    :param erp: the ERP sandbox's ``/_sandbox/state``.
    :param credit_note_path: ``rms``: a booked return has no ERP credit note and is on the RMS path instead.
    """
    orders = {c["orderCode"]: ledger.get_order(c["orderCode"]) for c in plan.creates}
    invoices = _by_order(ledger.documents(s.DOC_INVOICE))
    credit_notes = _by_order(ledger.documents(s.DOC_CREDIT_NOTE))
    returns = _by_order(ledger.return_orders())
    order_posting_dead = {d["business_key"] for d in ledger.dead_letters() if d["stage"] == s.STAGE_ORDER_POSTING}
    erp_orders = Counter(o["orderCode"] for o in erp["sales_orders"])
    erp_invoice_by_order = {i["orderCode"]: i for i in erp["invoices"]}

    def walked(code: str, path: str) -> bool:
        order = orders[code]
        invoice = next(iter(invoices.get(code, [])), None)
        notes_for_order = credit_notes.get(code, [])
        order_returns = returns.get(code, [])
        if path == paths.MISSING_PO:
            return order is None and erp_orders[code] == 0 and code in order_posting_dead
        if order is None or erp_orders[code] > 1:
            return False
        if path == paths.NOTHING_TO_INVOICE:
            return order["state"] == s.ORDER_NOTHING_TO_INVOICE and erp_orders[code] == 0
        if path == paths.CANCEL_BEFORE_BOOKING:
            return order["cancel_route"] == s.CANCEL_NOT_BOOKED and erp_orders[code] == 0
        if path == paths.CANCEL_BEFORE_INVOICING:
            return order["cancel_route"] == s.CANCEL_SALES_ORDER and code not in erp_invoice_by_order
        if path == paths.CANCEL_WITHIN_24H:
            return (order["cancel_route"] == s.CANCEL_IRN and code in erp_invoice_by_order
                    and erp_invoice_by_order[code]["status"] == "CANCELLED")
        if path == paths.CANCEL_AFTER_24H:
            return order["cancel_route"] == s.CANCEL_CREDIT_NOTE and [n["state"] for n in notes_for_order] == [s.DOC_KEPT_IN_ERP]
        if invoice is None or invoice["state"] != s.DOC_UPLOADED:
            return False
        if path == paths.PLAIN:
            return order["state"] == s.ORDER_COMPLETED and not order_returns
        if path == paths.PARTIAL_CANCEL:
            return (order["state"] == s.ORDER_COMPLETED_WITH_RETURN
                    and [(r["kind"], r["state"]) for r in order_returns] == [(s.RETURN_PARTIAL_CANCEL, s.RETURN_BOOKED)]
                    and [n["state"] for n in notes_for_order] == [s.DOC_KEPT_IN_ERP])
        if path in (paths.CUSTOMER_RETURN, paths.RTO):
            if len(order_returns) != 1:
                return False
            [ret] = order_returns
            if ret["state"] == s.RETURN_MANUAL_ONLY:
                return not notes_for_order and bool(ledger.manual_settlements(ret["return_order_code"]))
            if credit_note_path == "rms":
                return (ret["state"] == s.RETURN_BOOKED and not notes_for_order
                        and ledger.get_rms_return(ret["return_order_code"]) is not None)
            return ret["state"] == s.RETURN_BOOKED and [n["state"] for n in notes_for_order] == [s.DOC_UPLOADED]
        return False

    per_path: dict[str, list[bool]] = {}
    for code, path in plan.path.items():
        per_path.setdefault(path, []).append(walked(code, path))
    return per_path


def _by_order(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["order_code"], []).append(row)
    return grouped


def reconcile(
    plan: paths.Plan, omni: Any, runs: list[tuple[str, str]], before: tuple, after: tuple, wall_s: float,
    *, rms: tuple[list[dict[str, Any]], Any] | None = None,
) -> int:
    """Print the reconciliation; ``rms`` = (the return postings, the report folder) on the RMS credit-note path."""
    from omni_erp.ledger import Ledger

    ledger = Ledger.from_conn_id()
    erp, omni_state = after
    postings = ledger.postings()
    orders = {c["orderCode"]: ledger.get_order(c["orderCode"]) for c in plan.creates}
    invoices = ledger.documents(s.DOC_INVOICE)
    credit_notes = ledger.documents(s.DOC_CREDIT_NOTE)
    returns = ledger.return_orders()
    dead = ledger.dead_letters()
    settlements = ledger.manual_settlements()
    erp_orders = Counter(o["orderCode"] for o in erp["sales_orders"])
    omni_invoices = {d["body"]["invoiceNumber"]: d["body"] for d in omni_state["invoices"]}
    omni_credit_notes = {d["body"]["creditNoteNumber"]: d["body"] for d in omni_state["credit_notes"]}
    by_event = Counter(p["event_type"] for p in postings)
    outcome = Counter((p["event_type"], p["outcome"] or p["state"]) for p in postings)

    print("\n" + "=" * 78)
    print("Reconciliation")
    print("=" * 78)
    _section("Inbox (Omni -> us)", [
        ("postings pushed by Omni", omni.sent),
        ("  of which re-deliveries, answered 200 and stored once", omni.redelivered),
        ("postings stored in the ledger", len(postings)),
        *[(f"  {event}", n) for event, n in sorted(by_event.items())],
        ("invalid postings rejected (kept in the rejection log)", len(omni.rejected)),
    ])
    _section("F1 omni_order_posting (CREATE -> ERP sales order)", [
        ("orders booked in the ERP", sum(erp_orders.values())),
        ("duplicate bookings answered from the idempotency key", erp["duplicates"].get("sales_order", 0)),
        ("not booked: every unit cancelled", sum(1 for o in orders.values() if o and o["state"] == s.ORDER_NOTHING_TO_INVOICE)),
        ("not booked: cancelled before booking", outcome[("OUTWARD_ORDER_CREATE", "cancelled_before_booking")]
         + sum(n for (e, o), n in outcome.items() if e == "OUTWARD_ORDER_CREATE" and o.startswith("not_booked_"))),
        ("dead-lettered (reason below)", sum(1 for d in dead if d["stage"] == s.STAGE_ORDER_POSTING)),
    ])
    invoice_states = Counter(d["state"] for d in invoices)
    _section("F2 erp_invoice_upload (ERP e-invoice -> Omni)", [
        ("e-invoices generated by the ERP", len(erp["invoices"])),
        ("recorded in the ledger", len(invoices)),
        ("uploaded to Omni", invoice_states[s.DOC_UPLOADED]),
        ("  of which partial invoices (with line entries)", sum(1 for b in omni_invoices.values() if b.get("isPartialInvoice"))),
        ("not uploaded: order cancelled first", invoice_states[s.DOC_SKIPPED]),
        ("refused: unknown order / mismatch / Omni 4xx",
         invoice_states[s.DOC_UNMATCHED] + invoice_states[s.DOC_MISMATCH] + invoice_states[s.DOC_UPLOAD_FAILED]),
    ])
    routes = Counter(o["cancel_route"] for o in orders.values() if o and o["state"] == s.ORDER_CANCELLED)
    _section("F3 omni_order_cancellation (CANCEL -> ERP)", [
        ("not booked yet: nothing called", routes[s.CANCEL_NOT_BOOKED]),
        ("booked, not invoiced: ERP sales order cancelled", routes[s.CANCEL_SALES_ORDER]),
        ("invoiced < 24 h ago: IRN and order cancelled", routes[s.CANCEL_IRN]),
        (">= 24 h after the IRN: credit note kept in the ERP", routes[s.CANCEL_CREDIT_NOTE]),
    ])
    order_states = Counter(o["state"] for o in orders.values() if o)
    complete_postings = [p for p in postings if p["event_type"] == "OUTWARD_ORDER_COMPLETE"]
    shipments_in_postings = sum(len(json.loads(p["payload"]).get("shipments") or []) for p in complete_postings)
    shipments_recorded = sum(len(ledger.order_shipments(code)) for code in orders)
    _section("F4 omni_order_completion (COMPLETE -> ERP)", [
        ("orders completed, shipped == invoiced", order_states[s.ORDER_COMPLETED]),
        ("shipped < invoiced: ERP return order for the difference", order_states[s.ORDER_COMPLETED_WITH_RETURN]),
        ("shipments in postings / recorded once by shipmentCode", f"{shipments_in_postings}/{shipments_recorded}"),
        ("dead-lettered (shipped > invoiced, unknown order)", sum(1 for d in dead if d["stage"] == s.STAGE_COMPLETION)),
    ])
    note_states = Counter(d["state"] for d in credit_notes)
    return_kinds = Counter((r["kind"], r["state"]) for r in returns)
    _section("F5 + F6 omni_return_credit_note (returns -> ERP -> credit notes -> Omni)", [
        ("customer returns booked in the ERP", return_kinds[(s.RETURN_CUSTOMER, s.RETURN_BOOKED)]),
        ("RTOs booked in the ERP", return_kinds[(s.RETURN_RTO, s.RETURN_BOOKED)]),
        ("returns with no unit passing QC (nothing credited)", sum(n for (k, st), n in return_kinds.items() if st == s.RETURN_MANUAL_ONLY)),
        ("units listed for manual settlement (QC FAIL / missing)", len(settlements)),
        ("credit notes raised by the ERP", len(erp["credit_notes"])),
        ("credit notes uploaded to Omni", note_states[s.DOC_UPLOADED]),
        ("credit notes kept in the ERP (F3 >= 24 h, F4 partial cancel)", note_states[s.DOC_KEPT_IN_ERP]),
    ])

    rms_checks: list[tuple[str, bool]] = []
    if rms is not None:
        from omni_erp.demo.rms import reconcile_rms

        rms_rows, rms_checks = reconcile_rms(rms[0], ledger, rms[1], erp, omni_state)
        _section("RMS credit-note path (returns -> ERP without credit note -> report for Increff RMS)", rms_rows)

    all_calls = ledger.calls()
    # ERPNext answers a retried insert whose first answer was lost with 409 DuplicateEntryError on the key field;
    # the adapter replays the saved document, so these need nobody.
    replayed = sum(1 for c in all_calls if c["outcome"] == "rejected" and c["status_code"] == 409
                   and (c["error"] or "").startswith("DuplicateEntryError"))
    calls = Counter((c["system"], c["outcome"]) for c in all_calls)
    _section("Outbound calls (every attempt is in the ledger's outbound_call table)", [
        ("ERP calls answered", calls[("erp", "ok")]),
        ("  attempts retried after a 5xx, 429 or timeout", calls[("erp", "retry")]),
        ("Omni uploads answered", calls[("omni", "ok")]),
        ("  attempts retried after a 5xx, 429 or timeout", calls[("omni", "retry")]),
        *([("ERP 409 duplicates to a retried create (saved one replayed)", replayed)] if replayed else []),
        ("calls refused with a 4xx (needs a person)", calls[("erp", "rejected")] + calls[("omni", "rejected")] - replayed),
    ])

    per_path = path_results(plan, ledger, erp, credit_note_path="rms" if rms is not None else "erp")
    print("\nEvery order, by path (as expected / orders)")
    print("-" * 78)
    for path, results in sorted(per_path.items()):
        print(f"  {path:<{WIDTH}} {sum(results):>3}/{len(results):<4}")
    print(f"  {'of which invoiced for less than the PO (partial)':<{WIDTH}} {len(plan.partial_invoice):>3}")

    # --- invariants --------------------------------------------------------------------------
    ledger_so = {o["erp_sales_order_id"] for o in orders.values() if o and o["erp_sales_order_id"]}
    before_erp, before_omni = before
    pending_without_reason = [p["message_id"] for p in postings if p["state"] in (s.PENDING, s.CLAIMED) and not p["last_error"]]
    checks = [
        ("every order walked its planned path", all(all(r) for r in per_path.values())),
        ("every posting is terminal, or pending with a reason", not pending_without_reason),
        ("ERP sales orders = ledger ERP order ids (1:1)", {o["salesOrderId"] for o in erp["sales_orders"]} == ledger_so),
        ("ERP e-invoices = ledger invoices (1:1)", {i["invoiceNumber"] for i in erp["invoices"]} == {d["doc_number"] for d in invoices}),
        ("ERP credit notes = ledger credit notes (1:1)",
         {c["creditNoteNumber"] for c in erp["credit_notes"]} == {d["doc_number"] for d in credit_notes}),
        ("ERP return orders = ledger return orders (1:1)",
         {r["returnOrderId"] for r in erp["return_orders"]} == {r["erp_return_order_id"] for r in returns if r["erp_return_order_id"]}),
        ("Omni invoices = ledger invoices marked uploaded (1:1)",
         set(omni_invoices) == {d["doc_number"] for d in invoices if d["state"] == s.DOC_UPLOADED}),
        ("Omni credit notes = ledger credit notes marked uploaded (1:1)",
         set(omni_credit_notes) == {d["doc_number"] for d in credit_notes if d["state"] == s.DOC_UPLOADED}),
        ("no order booked twice in the ERP", max(erp_orders.values(), default=0) <= 1),
        ("no document uploaded twice to Omni", not any(omni_state["duplicates"].values())),
        ("the final re-run of all five DAGs wrote nothing new",
         _write_calls(erp) == _write_calls(before_erp) and _write_calls(omni_state) == _write_calls(before_omni)),
        *rms_checks,
    ]
    print("\nInvariants")
    print("-" * 78)
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")

    print("\nDead letters, rejections and manual settlements (stage, key, reason)")
    print("-" * 78)
    for d in dead:
        print(f"  {d['stage']:<20} {d['business_key'] or d['message_id'] or '-':<16} {d['reason'][:80]}")
    for m in settlements:
        print(f"  {'manual_settlement':<20} {m['return_order_code']:<16} {m['sku']} {m['reason'][:60]}")
    print("=" * 78)
    failed_runs = [f"{dag} ({state})" for dag, state in runs if state != "success"]
    print(f"DAG runs: {len(runs)} ({len(runs) - len(failed_runs)} successful"
          + (f"; not successful: {', '.join(failed_runs)}" if failed_runs else "") + f"). Wall time: {wall_s:.1f} s")
    if all(ok for _, ok in checks):
        print(f"OK: all {len(plan.creates)} orders accounted for on every path; nothing booked or uploaded twice.")
        return 0
    print("FAILED: see the invariants above.")
    return 1
