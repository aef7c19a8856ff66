"""The shared base of the operators that read an ERP document feed (e-invoices for F2, credit notes for F6) into the ledger."""

from __future__ import annotations

import json
import os
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from airflow.sdk.exceptions import AirflowFailException

from omni_erp.exceptions import RemoteRejectedError
from omni_erp.operators.base import ErpOperator, not_about_the_item
from omni_erp.rules.credit_notes import UPLOAD_PARTIAL_CANCEL_ENV
from omni_erp.states import (
    DOC_INVALID,
    DOC_MISMATCH,
    DOC_UNMATCHED,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.models.erp import CreditNotePage, EInvoicePage

NUMBER_MAX = 64  # erp_document.doc_number
CONFLICT = "conflict"  # summary key: a known document number the ERP now lists for another document
NOT_RECORDED = "not_recorded"  # summary key: nothing could be recorded, so the cursor stays before it


def as_bool(value: Any) -> bool:
    """A templated flag as a bool: ``"True"``, ``"true"``, ``"1"``, ``"yes"`` are true; ``None`` and ``""`` false."""
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none", "null"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def as_optional_seq(value: Any) -> int | None:
    """A templated sequence number: ``None`` (also rendered as ``"None"`` or ``""``) or an integer >= 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"since_seq must be an integer, got {value!r}")
    seq = int(str(value).strip())
    if seq < 0:
        raise ValueError(f"since_seq must be >= 0, got {seq}")
    return seq


def upload_partial_cancel_credit_notes() -> bool:
    """Deployment switch of domain.md decision 6 (read at run time, never at parse time)."""
    return as_bool(os.environ.get(UPLOAD_PARTIAL_CANCEL_ENV) or False)


# --- operators -------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` with the characters a person cannot see (or PostgreSQL cannot store, NUL) escaped, e.g. ``\\u202e``."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def usable_number(value: Any) -> str | None:
    """The document number when it can key the ledger - a visible string of 1-64 characters - else None."""
    if isinstance(value, str) and 0 < len(value) <= NUMBER_MAX and value.isprintable() and value.strip() == value:
        return value
    return None


def _text(value: Any, limit: int = 255) -> str | None:
    """A payload field fit for a ledger column, or None."""
    return value if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable() else None


def _amount(value: Any) -> Decimal | str:
    """An amount compared by value (``2240``, ``2240.0`` and ``"2240.00"`` are equal); anything else as text."""
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    return amount if amount.is_finite() else str(value)


def _error_text(exc: BaseException) -> str:
    """One line about an exception: the driver's message for database errors (never the SQL and its parameters)."""
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return printable(f"{type(cause).__name__}: {first_line}")[:300]


def _json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, default=str)


class DocumentRead(NamedTuple):
    """What reading one feed document did."""

    count: str | None = None  # summary key: its new state, "conflict", ... (None: nothing to count)
    new: bool = False  # a document row was recorded (or an invalid one replaced)
    problem: str | None = None  # a problem found for the first time: dead-lettered, and the task ends failed


class ErpDocumentFetchOperator(ErpOperator):
    """Read one ERP document feed into the ledger, once per document number, and match each document.

    The feed is read page by page from ``max(0, cursor - lookback)``: the ERP can publish a document
    after documents with a higher ``seq`` (contracts/erp_rest.yaml), so every run looks ``lookback``
    sequence numbers behind its cursor. A document number already in the ledger is a re-read when it
    still names the same document (same order, IRN, amount, return order): nothing happens. When the ERP
    lists a known number for another document (it reused a number: a restored backup, a reset series),
    the second document is a conflict: dead-lettered with both documents named, never recorded or uploaded.

    One document never stops the others: a document the contract does not allow, or that cannot be
    matched (an unexpected error), is recorded as ``invalid`` with the reason and dead-lettered (only
    dead-lettered when it has no usable number); an ``invalid`` document is matched again when a later
    run re-reads it (``since_seq`` after a fix). The cursor moves forward only, to the highest ``seq``
    recorded; it stays before a document for which nothing at all could be recorded, so the next run
    reads it again. Everything found for the first time (new dead letters: unmatched, mismatches,
    invalid documents, conflicts) fails the task after the whole feed was read, so the run is red and the
    failure alert names them; seeing a known problem again is logged, not alerted again. A ledger outage
    fails the task at once.

    :param erp_conn_id: connection of the ERP.
    :param since_seq: read from this sequence number instead of the stored cursor (templated; None or
        "None" = use the cursor) - for re-reads and backfills.
    :param lookback: sequence numbers re-read behind the cursor; must exceed how far the ERP can publish
        out of order.
    :param page_size: documents per feed request.
    """

    doc_type: ClassVar[str]
    cursor_name: ClassVar[str]
    stage: ClassVar[str]
    label: ClassVar[str]  # in reasons and logs: "e-invoice", "credit note"
    number_alias: ClassVar[str]  # the number's field in the ERP document
    # (name in messages, field) of what makes a number mean one document: another value = another document.
    identity_fields: ClassVar[tuple[tuple[str, str], ...]]
    template_fields = (*ErpOperator.template_fields, "since_seq")

    def __init__(
        self,
        *,
        since_seq: int | str | None = None,
        lookback: int = 200,
        page_size: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.since_seq = since_seq
        self.lookback = lookback
        self.page_size = page_size

    def read_page(self, since: int) -> EInvoicePage | CreditNotePage:
        """One page of the feed after ``since``."""
        raise NotImplementedError

    def number(self, document: Any) -> str:
        """The document's number (its key in the ledger)."""
        raise NotImplementedError

    def related_code(self, payload: dict[str, Any]) -> Any:
        """What ``erp_document.related_code`` holds for a document (from its JSON)."""
        raise NotImplementedError

    def classify(self, document: Any) -> tuple[str, str | None]:
        """The state (and reason) matching would give a readable document, read only; raises when it cannot be matched."""
        raise NotImplementedError

    def match_and_record(self, document: Any, *, replace: bool) -> DocumentRead:
        """Match a readable document and record it (inside the caller's transaction; ``replace``: over an invalid row)."""
        raise NotImplementedError

    def would_also(self, document: Any, state: str) -> str:
        """For a dry run's log: what recording the document in ``state`` would change besides its row ('' for nothing)."""
        return ""

    def extend_summary(self, summary: dict[str, Any]) -> None:
        """Add flow-specific figures to the XCom summary (called after the feed was read, before failing)."""

    def execute(self, context: Context) -> dict[str, Any]:
        if self.lookback < 0 or self.page_size < 1:
            raise ValueError("lookback must be >= 0 and page_size >= 1")
        override = as_optional_seq(self.since_seq)
        scope = self.scope
        if scope.selective:
            # Recording documents is bookkeeping: a feed reader that skipped some would lose them behind its cursor.
            self.log.info("The %s feed is read whole whatever the run's orders or window; the upload step applies them", self.doc_type)
        dry = scope.dry_run
        cursor = int(self.ledger.get_cursor(self.cursor_name, "0") or 0)
        since = override if override is not None else max(0, cursor - self.lookback)
        self.log.info("Reading %s feed from seq %d (cursor %d, lookback %d)", self.doc_type, since, cursor, self.lookback)
        read = new = 0
        would_cursor = cursor  # dry run: where the cursor would go
        counts: Counter[str] = Counter()
        problems: list[str] = []
        ceiling: int | None = None  # the cursor stays below a document for which nothing could be recorded
        while True:
            try:
                page = self.read_page(since)
            except RemoteRejectedError as exc:
                # A 4xx on a read is configuration (token, URL), not data: retrying the task will not help.
                raise AirflowFailException(f"the ERP refused to list {self.doc_type}s: {exc}") from exc
            entries: list[Any] = [*page.items, *page.unreadable]
            seqs: list[int] = []
            for listed in entries:
                read += 1
                entry, seq = _placed(listed, since, page.next_cursor)
                seqs += [] if seq is None else [seq]
                try:
                    outcome = self._preview_one(entry, seq) if dry else self._read_one(entry, seq)
                except Exception as exc:
                    if not_about_the_item(exc):
                        raise
                    self.log.exception("Nothing could be recorded for the %s at seq %s; the cursor stays before it", self.label, seq)
                    stop = since if seq is None else seq - 1
                    ceiling = stop if ceiling is None else min(ceiling, stop)
                    outcome = DocumentRead(NOT_RECORDED, False, f"{self.label} at seq {seq}: nothing could be recorded ({_error_text(exc)})")
                counts.update([outcome.count] if outcome.count else [])
                new += outcome.new
                if outcome.problem:
                    problems.append(outcome.problem)
            if seqs:
                # Every document up to here is in the ledger now (recorded before or just now), or dead-lettered.
                top = max(seqs) if ceiling is None else min(max(seqs), ceiling)
                if dry:
                    would_cursor = max(would_cursor, top)
                else:
                    cursor = self.ledger.advance_cursor(self.cursor_name, top)
            if len(entries) < self.page_size or page.next_cursor <= since:
                break
            since = page.next_cursor
        if dry:
            return self._dry_run_summary(read, new, cursor, would_cursor, counts, problems)
        summary: dict[str, Any] = {"batch_id": self.batch_id, "read": read, "new": new, "cursor": cursor}
        summary.update({k: counts[k] for k in sorted(counts)})
        self.extend_summary(summary)
        self.log.info("Read %s feed: %s", self.doc_type, summary)
        if problems:
            shown = " | ".join(p[:400] for p in problems[:5]) + (f" | and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise AirflowFailException(
                f"{len(problems)} {self.label}(s) of the ERP feed need a person (dead-lettered, not uploaded): {shown}. "
                f"Summary: {summary}"
            )
        return summary

    def _dry_run_summary(
        self, read: int, new: int, cursor: int, would_cursor: int, counts: Counter[str], problems: list[str]
    ) -> dict[str, Any]:
        """A dry run's XCom: what the feed holds and what reading it would record; it never fails for a document."""
        self.log.info(
            "DRY RUN would move the %s cursor from %d to %d (it stays at %d)", self.cursor_name, cursor, would_cursor, cursor
        )
        summary: dict[str, Any] = {
            "batch_id": self.batch_id, "dry_run": True, "read": read, "would_record": new,
            "would_dead_letter": len(problems), "cursor": cursor, "would_move_cursor_to": would_cursor,
        }
        summary.update({k: counts[k] for k in sorted(counts)})
        self.extend_summary(summary)
        self.log.info("DRY RUN read %s feed: %s (nothing was recorded)", self.doc_type, summary)
        return summary

    def _unpack(self, entry: Any) -> tuple[Any, Any, Any, str | None]:
        """A feed entry as (its raw number, its payload, the parsed document or None, the contract problem or None)."""
        from omni_erp.models.erp import UnreadableDocument

        if isinstance(entry, UnreadableDocument):
            return entry.get(self.number_alias), entry.raw, None, f"the ERP's document breaks the contract: {entry.problem}"
        return self.number(entry), entry.model_dump(mode="json", by_alias=True), entry, None

    def _preview_one(self, entry: Any, seq: int | None) -> DocumentRead:
        """What ``_read_one`` would do with one feed document, logged with ``DRY RUN``; reads the ledger only."""
        raw_number, payload, document, problem = self._unpack(entry)
        number = usable_number(raw_number)
        if number is None:
            shown = "none" if raw_number is None else printable(repr(raw_number))[:80]
            reason = f"{self.label} at seq {seq} not recorded; its number {shown} cannot key the ledger" + (
                f"; {problem}" if problem else ""
            )
            self.log.info("DRY RUN would dead-letter (once): %s", printable(reason))
            return DocumentRead(DOC_INVALID, False, reason)
        existing = self.ledger.get_document(self.doc_type, number)
        if existing is not None and existing["state"] != DOC_INVALID:
            if self._identity(existing["payload"]) == self._identity(payload):
                return DocumentRead()
            reason = printable(
                f"{self.label} number {number} is already recorded for {self._describe(existing['payload'])}; "
                f"the ERP now lists it for {self._describe(payload)}"
            )
            self.log.info("DRY RUN would dead-letter the conflict (once): %s", reason)
            return DocumentRead(CONFLICT, False, reason)
        over = " over its invalid row" if existing is not None else ""
        if document is not None:
            try:
                state, reason = self.classify(document)
            except Exception as exc:
                if not_about_the_item(exc):
                    raise
                problem = f"it could not be matched: {_error_text(exc)}"
            else:
                also = self.would_also(document, state)
                self.log.info(
                    "DRY RUN would record %s %s of order %s (seq %s)%s as %s%s%s", self.label, printable(number),
                    printable(str(document.order_code)), seq, over, state, f": {printable(reason)}" if reason else "",
                    f"; {also}" if also else "",
                )
                refused = state in (DOC_UNMATCHED, DOC_MISMATCH)
                if refused:
                    self.log.info("DRY RUN would dead-letter %s %s (once): not uploaded: %s", self.label, printable(number), reason)
                return DocumentRead(state, True, f"{self.label} {number} not uploaded: {reason}" if refused else None)
        reason = printable(f"{self.label} {number} not uploaded: {problem}")
        self.log.info("DRY RUN would record %s %s%s as %s and dead-letter it (once): %s", self.label, printable(number), over,
                      DOC_INVALID, reason)
        return DocumentRead(DOC_INVALID, existing is None, reason)

    def _read_one(self, entry: Any, seq: int | None) -> DocumentRead:
        """Record one feed document, or tell why not; raises only when nothing at all could be recorded."""
        raw_number, payload, document, problem = self._unpack(entry)
        number = usable_number(raw_number)
        if number is None:
            return self._dead_letter_without_number(raw_number, seq, payload, problem)
        existing = self.ledger.get_document(self.doc_type, number)
        if existing is not None and existing["state"] != DOC_INVALID:
            return self._known(existing, number, payload)
        if document is not None:
            try:
                with self.ledger.transaction():
                    return self.match_and_record(document, replace=existing is not None)
            except Exception as exc:
                if not_about_the_item(exc):
                    raise
                if not isinstance(exc, ValueError):  # PayloadError and bad dates say enough without a traceback
                    self.log.exception("The %s %s could not be matched", self.label, printable(number))
                problem = f"it could not be matched: {_error_text(exc)}"
        return self._record_invalid(number, seq, payload, problem or "", existing)

    def _known(self, existing: dict[str, Any], number: str, payload: Any) -> DocumentRead:
        """A number the ledger holds: a re-read when it names the same document, else a conflict.

        The reason names only what does not change (not the first document's state): it keys the dead letter,
        so the same conflict is dead-lettered and alerted once however often the look-back re-reads it.
        """
        if self._identity(existing["payload"]) == self._identity(payload):
            return DocumentRead()
        reason = printable(
            f"{self.label} number {number} is already recorded for {self._describe(existing['payload'])}; "
            f"the ERP now lists it for {self._describe(payload)}. The ERP reused a document "
            "number (a restored backup or a reset number series?): the second document is neither recorded nor "
            "uploaded until the ERP gives it a number of its own"
        )
        if self.ledger.record_dead_letter(stage=self.stage, reason=reason, business_key=number, payload=_json(payload)):
            self.log.error("%s", reason)
            return DocumentRead(CONFLICT, False, reason)
        self.log.warning("%s number %s still conflicts (dead-lettered before): %s", self.label, number, reason)
        return DocumentRead(CONFLICT)

    def _record_invalid(self, number: str, seq: int | None, payload: Any, problem: str, existing: dict[str, Any] | None) -> DocumentRead:
        """Record a document that cannot be used as ``invalid`` with the reason, and dead-letter it - both or neither."""
        reason = printable(f"{self.label} {number} not uploaded: {problem}")[:2000]
        fields = payload if isinstance(payload, dict) else {}
        ledger = self.ledger
        with ledger.transaction():
            if existing is None:
                recorded = ledger.record_document(
                    doc_type=self.doc_type,
                    doc_number=number,
                    order_code=_text(fields.get("orderCode")),
                    related_code=_text(self.related_code(fields)),
                    seq=seq,
                    payload=payload,
                    state=DOC_INVALID,
                    reason=reason,
                    batch_id=self.batch_id,
                )
            else:
                recorded = False
                if (existing["reason"], existing["payload"]) != (reason, payload):
                    ledger.update_document(
                        self.doc_type, number, payload=_json(payload), reason=reason, seq=seq, batch_id=self.batch_id
                    )
            dead = ledger.record_dead_letter(stage=self.stage, reason=reason, business_key=number, payload=_json(payload))
        if dead:
            self.log.error("%s", reason)
        return DocumentRead(DOC_INVALID if recorded else None, recorded, reason if dead else None)

    def _dead_letter_without_number(self, raw_number: Any, seq: int | None, payload: Any, problem: str | None) -> DocumentRead:
        """A document without a number the ledger can key: the dead letter (with the document) is its record."""
        shown = "none" if raw_number is None else printable(repr(raw_number))[:80]
        why = [f"its number {shown} cannot key the ledger (a visible string of 1-{NUMBER_MAX} characters is needed)"]
        reason = printable("; ".join([f"{self.label} at seq {seq} not recorded", *why, *([problem] if problem else [])]))
        business_key = None if raw_number is None else printable(str(raw_number))[:255]
        if self.ledger.record_dead_letter(stage=self.stage, reason=reason[:2000], business_key=business_key, payload=_json(payload)):
            self.log.error("%s", reason)
            return DocumentRead(DOC_INVALID, False, reason)
        return DocumentRead()

    def _store(self, document: Any, state: str, reason: str | None, *, related_code: str | None, replace: bool) -> bool:
        """Write the matched document's row (a new one, or over its invalid row); False when another run recorded it first."""
        number = self.number(document)
        payload = document.model_dump(mode="json", by_alias=True)
        values = dict(
            order_code=document.order_code,
            related_code=related_code,
            seq=document.seq,
            state=state,
            reason=printable(reason) if reason else None,
            batch_id=self.batch_id,
        )
        if replace:
            self.ledger.update_document(self.doc_type, number, payload=_json(payload), **values)
            return True
        return self.ledger.record_document(doc_type=self.doc_type, doc_number=number, payload=payload, **values)

    def _refused(self, number: str, state: str, reason: str | None) -> DocumentRead:
        """The outcome of a recorded document; unmatched and mismatched ones are dead-lettered (same transaction)."""
        if state not in (DOC_UNMATCHED, DOC_MISMATCH):
            return DocumentRead(state, True)
        text = printable(f"{self.label} {number} not uploaded: {reason}")
        if self.ledger.record_dead_letter(stage=self.stage, reason=text, business_key=number):
            self.log.warning("%s", text)
            return DocumentRead(state, True, text)
        return DocumentRead(state, True)

    def _identity(self, payload: Any) -> tuple[Any, ...]:
        fields = payload if isinstance(payload, dict) else {}
        return tuple(_amount(fields.get(key)) if key == "totalValue" else fields.get(key) for _, key in self.identity_fields)

    def _describe(self, payload: Any) -> str:
        fields = payload if isinstance(payload, dict) else {}
        return ", ".join(f"{name} {fields.get(key)}" for name, key in self.identity_fields)


def _placed(entry: Any, since: int, next_cursor: int) -> tuple[Any, int | None]:
    """The entry and its feed position, which must lie within the page, ``(since, nextCursor]``.

    A position outside it is the ERP contradicting itself: it never moves the cursor (a wild ``seq`` would
    make every later run skip real documents), and a readable document claiming one is treated as unreadable.
    """
    from omni_erp.models.erp import UnreadableDocument

    unreadable = isinstance(entry, UnreadableDocument)
    seq = entry.get("seq") if unreadable else entry.seq
    if isinstance(seq, int) and not isinstance(seq, bool) and since < seq <= next_cursor:
        return entry, seq
    if unreadable:
        return entry, None
    problem = f"seq {seq} lies outside the page it was listed on ({since}, {next_cursor}]"
    return UnreadableDocument(entry.model_dump(mode="json", by_alias=True), problem), None
