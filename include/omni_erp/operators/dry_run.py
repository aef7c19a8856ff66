"""Dry runs of the posting flows that call the ERP (F3, F4, F5): log what would be sent and recorded, do neither.

A dry run (``RunScope.dry_run``, the trigger form's ``dry_run``) goes through the same rules as a real run, item
by item, on the postings a claim would take now (``LedgerOperator.postings_of_this_run``), and instead of each
ledger write or ERP call logs one line starting ``DRY RUN would``. ERP requests are logged as the adapter would
send them - ``DRY RUN would POST <endpoint> key <idempotency key> body <body>`` - because the operator really
calls the adapter, whose writes are stopped at the wire (``dry_run_adapter``): the body is the adapter's own
(JSON for the REST ERPs, XML for Tally), never a copy of it. Read-only requests (GETs, Tally exports) do go
out, unrecorded; nothing is written to the ledger, not even ``outbound_call`` rows or lease renewals.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from omni_erp.operators.base import ErpOperator

if TYPE_CHECKING:
    from omni_erp.hooks.erp import ErpAdapter
    from omni_erp.ledger.repo import ClaimedPosting

DRY_RUN = "DRY RUN"
WOULD_DEAD_LETTER = "would_dead_letter"


class WouldSend(Exception):  # noqa: N818 - not an error: the request a dry run stopped at the wire
    """A write request a dry run did not send: method, endpoint, idempotency key and body, as the adapter built them."""

    def __init__(self, method: str, endpoint: str, key: str | None, body: Any) -> None:
        super().__init__(f"{method} {endpoint}")
        self.method = method
        self.endpoint = endpoint
        self.key = key
        self.body = body

    def describe(self) -> str:
        """``POST <endpoint> key <key> body <body>``; the body serialised as the HTTP client would (``json.dumps``)."""
        body = self.body if isinstance(self.body, str) else json.dumps(self.body, allow_nan=False)
        return f"{self.method} {self.endpoint.split('?')[0]} key {self.key or '-'} body {body}"


def reads_only(method: str, body: Any) -> bool:
    """True for a request that changes nothing in the ERP: a GET (or HEAD), or a TallyPrime XML export
    (Tally reads through POSTs too; only its ``Import Data`` requests write)."""
    if method.upper() in ("GET", "HEAD"):
        return True
    return isinstance(body, str) and "<TALLYREQUEST>Export</TALLYREQUEST>" in body


def dry_run_adapter(adapter: ErpAdapter) -> ErpAdapter:
    """``adapter`` with every write stopped before it is sent: the adapter's ``call`` raises ``WouldSend`` with
    the request it was about to send; read-only requests (``reads_only``) go out as usual.

    The adapter must be built without an ``on_attempt`` recorder (a dry run records nothing).
    """
    real_call = adapter.call  # type: ignore[attr-defined] - every adapter is a RetryingJsonHook

    def call(method: str, endpoint: str, *, json: Any = None, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        if reads_only(method, json):
            return real_call(method, endpoint, json=json, idempotency_key=idempotency_key, **kwargs)
        raise WouldSend(method, endpoint, idempotency_key, json)

    adapter.call = call  # type: ignore[attr-defined]
    return adapter


class DryRunErpOperator(ErpOperator):
    """An ``ErpOperator`` that can run dry: in a dry run its ERP adapter sends no write (``dry_run_adapter``) and
    records no attempt, and deferring or dead-lettering a posting is logged instead of recorded (``LedgerOperator``
    itself renews no lease in a dry run). Subclasses call ``would`` for each ledger write they skip and
    ``would_send`` for each ERP write.

    Since nothing is recorded, a later posting of the same order in one dry run (a re-delivery) would see the
    ledger as it was; ``handled_earlier`` remembers what the run would already have done, so it is reported as
    the real run would handle it (closed as a repeat, nothing sent twice)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._would_have_handled: dict[str, tuple[str, Any]] = {}
        self._would_lock = threading.Lock()

    def handled_earlier(self, key: str, message_id: str | None = None, what: Any = None) -> tuple[str, Any] | None:
        """In a dry run: ``(message_id, what)`` of the earlier posting of this run that would have handled ``key``
        (an order, a return order), or None - and then, given a ``message_id``, note that posting as the one."""
        with self._would_lock:
            earlier = self._would_have_handled.get(key)
            if earlier is None and message_id is not None:
                self._would_have_handled[key] = (message_id, what)
            return earlier

    @cached_property
    def erp(self) -> ErpAdapter:
        if not self.scope.dry_run:
            return super().erp
        from omni_erp.hooks.adapters import erp_adapter

        return self.limited(dry_run_adapter(erp_adapter(self.erp_conn_id, on_attempt=None)))

    def defer_posting(self, posting: ClaimedPosting, reason: str) -> None:
        if not self.scope.dry_run:
            super().defer_posting(posting, reason)
            return
        self.would("put posting %s (order %s) back in the queue: %s", posting.message_id, posting.order_code, reason)

    def dead_letter_posting(self, posting: ClaimedPosting, reason: str) -> None:
        if not self.scope.dry_run:
            super().dead_letter_posting(posting, reason)
            return
        self.would("dead-letter posting %s (order %s): %s", posting.message_id, posting.order_code, reason)

    def would(self, what: str, *args: Any) -> None:
        """Log one thing a dry run does not do: ``DRY RUN would <what>``."""
        self.log.info(f"{DRY_RUN} would {what}", *args)

    def would_send(self, send: Callable[[], Any]) -> WouldSend | None:
        """Run ``send`` (one adapter write) on the dry-run adapter and log the request it stopped at the wire.

        Returns that request, or None when the adapter found nothing to send (e.g. Tally: the voucher is
        cancelled already); an adapter that writes in several steps is stopped at its first write.
        """
        try:
            send()
        except WouldSend as request:
            self.log.info("%s would %s", DRY_RUN, request.describe())
            return request
        self.log.info("%s: the ERP already has it; nothing would be sent", DRY_RUN)
        return None

    def dry_run_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The XCom summary of a dry run: ``dry_run: true`` and the counts; logged with a reminder."""
        summary = {**summary, "dry_run": True}
        self.log.info("%s of %s: nothing was sent or recorded. Summary: %s", DRY_RUN, self.task_id, summary)
        return summary
