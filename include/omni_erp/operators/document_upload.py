"""The shared base of the operators that upload the ledger's ready ERP documents to Increff Omni, each exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from omni_erp import settings
from omni_erp.exceptions import PayloadError, RemoteRejectedError, RemoteUnavailableError
from omni_erp.operators.base import ErpOperator, GroupCommit, _error_text, not_about_the_item
from omni_erp.operators.document_feed import as_bool, printable
from omni_erp.states import (
    DOC_READY,
    DOC_SKIPPED,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
)

if TYPE_CHECKING:
    from airflow.sdk import Context
    from pydantic import BaseModel

    from omni_erp.hooks.omni import OmniHook

DOCUMENT_MODES = ("url", "pdf")
# Documents per page of the upload queue: what the operator reads about them (``page_context``) is read once
# per page, not once per document.
PAGE_SIZE = 200


@dataclass(frozen=True)
class QueuedDocument:
    """One document of the upload queue as its page read it, with what the page read about it (``page_context``).

    ``order_code`` makes ``process_each`` handle the documents of one order one after the other.
    """

    document: dict[str, Any]
    context: Any
    label: str

    @property
    def number(self) -> str:
        return self.document["doc_number"]

    @property
    def order_code(self) -> str | None:
        return self.document.get("order_code")

    def __repr__(self) -> str:  # process_each names the item in its log lines
        return f"{self.label} {printable(self.number)!r}"


class OmniDocumentUploadOperator(ErpOperator):
    """Upload every ready document of one type to Omni, once per document number.

    The queue is read a page at a time (with what ``page_context`` needs about the page's documents); right
    before each call the document is taken for the attempt by a compare-and-set on its state and attempt
    count (``Ledger.take_document``), so a retried task, a re-run or another try beside this one sends
    nothing that was already uploaded or taken meanwhile. Each document's state change is its own
    transaction, as soon as Omni answers. Omni's 4xx, or a body that cannot be built from the document, marks the
    document failed with the reason (Increff's ``code``, ``message`` and ``description``) and
    dead-letters it, in one transaction; it stays failed until someone fixes the cause and re-triggers
    with ``retry_failed``. 5xx and timeouts are retried by the hook; if Omni stays down the documents
    stay ready for the next run, calls stop after ``max_consecutive_unavailable`` failures in a row.
    Any other error is isolated to its document (``process_each``): the document stays ready with the
    error as its reason and is tried again by the next run, and after ``OMNI_ERP_MAX_ITEM_ATTEMPTS``
    attempts it is marked failed and dead-lettered. The task ends failed whenever any document of the
    run was deferred or failed, so the run is red; the report step lists them.

    The run's scope (``run_scope``): with ``order_codes`` only the documents of those orders, with a
    ``window`` (a backfill run) only documents recorded in it; either way the ones Omni rejected are sent
    again too, as with ``retry_failed``, and uploaded ones never. A dry run builds each body the next real
    run would send (downloading the PDF, a GET, where ``document="pdf"``) and logs it as
    ``DRY RUN would POST <endpoint> key <key> body <json>`` - the PDF by size and SHA-256, never its content -
    and sends and records nothing; its XCom counts ``would_upload``, ``would_skip``, ``would_fail``,
    ``would_defer``.

    :param omni_conn_id: connection of Omni's ajio-vms endpoints.
    :param erp_conn_id: connection of the ERP (only used to download PDFs with ``document="pdf"``).
    :param retry_failed: also upload documents that Omni rejected before (templated).
    :param document: ``"url"`` sends the ERP's public PDF URL, ``"pdf"`` downloads the PDF and sends it base64.
    :param max_consecutive_unavailable: stop calling after this many documents in a row found Omni (or the ERP) down.
    """

    doc_type: ClassVar[str]
    stage: ClassVar[str]
    label: ClassVar[str]
    pdf_field: ClassVar[str]  # the body field that carries the PDF itself (base64)
    template_fields = (*ErpOperator.template_fields, "retry_failed")

    def __init__(
        self,
        *,
        omni_conn_id: str = settings.OMNI_CONN_ID,
        retry_failed: bool | str = False,
        document: str = "url",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.omni_conn_id = omni_conn_id
        self.retry_failed = retry_failed
        self.document = document

    @cached_property
    def omni(self) -> OmniHook:
        from omni_erp.hooks.omni import OmniHook

        return self.limited(OmniHook(self.omni_conn_id, on_attempt=self.record_attempt))

    def page_context(self, documents: list[dict[str, Any]]) -> Any:
        """What ``skip_reason`` and ``build`` need from the ledger about a page of documents, read once per page."""
        return None

    def build(self, document: dict[str, Any], pdf_base64: str | None, context: Any = None) -> BaseModel:
        """The Omni body for a ledger document; raises ``PayloadError``/``ValueError`` when it cannot be built.

        :param context: ``page_context`` of the document's page.
        """
        raise NotImplementedError

    def send(self, body: Any) -> None:
        """POST the body to Omni through the hook."""
        raise NotImplementedError

    def endpoint_and_key(self, number: str) -> tuple[str, str]:
        """Omni's endpoint for this document type and the key that names the upload in logs (``keys``)."""
        raise NotImplementedError

    def skip_reason(self, document: dict[str, Any], context: Any = None) -> str | None:
        """Why a ready document must not be uploaded any more (None: upload it); ``context``: its page's."""
        return None

    def execute(self, context: Context) -> dict[str, Any]:
        if self.document not in DOCUMENT_MODES:
            raise ValueError(f"document must be one of {DOCUMENT_MODES}, got {self.document!r}")
        scope = self.scope
        # A run for some orders or a window re-sends what Omni rejected of them too, as retry_failed does.
        retry = as_bool(self.retry_failed) or scope.selective
        states = [DOC_READY, DOC_UPLOAD_FAILED] if retry else [DOC_READY]
        pages: Iterable[list[dict[str, Any]]]
        if scope.selective:
            documents = self.ledger.select_documents(
                self.doc_type, states=states, order_codes=scope.order_codes, window=scope.window
            )
            self.log.info(
                "%d %s(s) of this run's scope to upload, rejected ones included: %s", len(documents), self.label,
                ", ".join(printable(d["doc_number"]) for d in documents[:20]) + (" ..." if len(documents) > 20 else ""),
            )
            pages = (documents[i : i + PAGE_SIZE] for i in range(0, len(documents), PAGE_SIZE))
        else:
            pages = self.ledger.upload_queue(self.doc_type, states=states, page_size=PAGE_SIZE)
        if scope.dry_run:
            return self._dry_run(self._queue(pages))
        return self.process_each(
            self._queue(pages),
            self._upload_one,
            defer=lambda item, reason: self._defer(item.number, reason),
            give_up=lambda item, reason: self._fail(item.number, reason),
            attempts=_earlier_attempts,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )

    def _queue(self, pages: Iterable[list[dict[str, Any]]]) -> Iterator[QueuedDocument]:
        """The documents of ``pages``, each with its page's ``page_context`` (read when the page is reached)."""
        for page in pages:
            context = self.page_context(page)
            for document in page:
                yield QueuedDocument(document, context, self.label)

    def _upload_one(self, item: QueuedDocument) -> str:
        ledger, document, number = self.ledger, item.document, item.number
        read_as = {"state": document["state"], "attempts": document["upload_attempts"], "batch_id": self.batch_id}
        if (reason := self.skip_reason(document, item.context)) is not None:
            if not ledger.skip_document(self.doc_type, number, reason=reason, **read_as):
                return "skipped"  # uploaded or changed since its page was read
            self.log.info("%s %s not uploaded: %s", self.label, number, reason)
            return DOC_SKIPPED
        # Taken (and the attempt counted) before the body is built, so a document that keeps failing in any step
        # reaches the bound; not taken: uploaded or changed since its page was read - never send twice.
        if not ledger.take_document(self.doc_type, number, **read_as):
            return "skipped"
        try:
            pdf = self._pdf(document) if self.document == "pdf" else None
            body = self.build(document, pdf, item.context)
        except RemoteRejectedError as exc:
            return self._fail(number, f"PDF download from the ERP refused (HTTP {exc.status}): {exc.message}")
        except (PayloadError, ValueError) as exc:
            return self._fail(number, f"cannot build the {self.label}: {exc}")
        try:
            self.send(body)
        except RemoteRejectedError as exc:
            code = f"{exc.code}: " if exc.code else ""
            return self._fail(number, f"Omni rejected the {self.label} (HTTP {exc.status}) {code}{exc.message}")
        self._uploads.submit(number)
        return DOC_UPLOADED

    @cached_property
    def _uploads(self) -> GroupCommit:
        """Marks documents Omni accepted ``uploaded``, several to a transaction (``GroupCommit``).

        Only this marking is grouped: the compare-and-set that takes a document for its attempt stays its own
        transaction before the send (Omni has no idempotency key), so a document is never sent twice by two
        tries. A task killed between Omni's answer and the group's commit leaves it taken and ready, as a kill
        between the answer and a transaction of its own did (a few milliseconds longer).
        """
        doc_type, batch_id, ledger = self.doc_type, self.batch_id, self.ledger
        return GroupCommit(ledger, lambda number: ledger.mark_document_uploaded(doc_type, number, batch_id=batch_id))

    def _pdf(self, document: dict[str, Any]) -> str:
        """Base64 of the document's PDF, downloaded from the ERP's ``pdfUrl`` through the ERP adapter."""
        return _base64(self._pdf_bytes(document))

    def _pdf_bytes(self, document: dict[str, Any]) -> bytes:
        url = document["payload"].get("pdfUrl")
        if not url:
            raise PayloadError("the ERP gave no pdfUrl")
        return self.erp.download_pdf(url, key=f"pdf:{document['doc_number']}")

    # --- dry run ------------------------------------------------------------------------------------

    def _dry_run(self, documents: Iterable[QueuedDocument]) -> dict[str, Any]:
        """Log what uploading ``documents`` would send and record; send nothing, write nothing.

        Each document on its own, as a real run: a problem is logged and counted, never stops the rest, and
        never fails the task (the dry run's answer is the log); only a ledger outage or an Airflow error does.
        """
        counts: Counter[str] = Counter()
        selected = 0
        for item in documents:
            selected += 1
            number = printable(item.number)
            try:
                outcome = self._preview_one(item.document, item.context)
            except RemoteUnavailableError as exc:
                self.log.warning("DRY RUN %s %s would wait for the next run (stays %s): %s", self.label, number, DOC_READY, exc)
                outcome = "would_defer"
            except Exception as exc:
                if not_about_the_item(exc):
                    raise
                self.log.warning(
                    "DRY RUN %s %s would be deferred with an unexpected error: %s", self.label, number, _error_text(exc),
                    exc_info=exc,
                )
                outcome = "would_defer"
            counts[outcome] += 1
        summary = {"batch_id": self.batch_id, "dry_run": True, "selected": selected, **{k: counts[k] for k in sorted(counts)}}
        self.log.info("DRY RUN %s: %s (nothing was sent or recorded)", self.task_id, summary)
        return summary

    def _preview_one(self, document: dict[str, Any], context: Any) -> str:
        """The body ``_upload_one`` would send for one document, logged; or why it would not send one."""
        import hashlib

        number = document["doc_number"]
        shown = printable(number)
        if (reason := self.skip_reason(document, context)) is not None:
            self.log.info("DRY RUN would not upload %s %s (would mark it %s): %s", self.label, shown, DOC_SKIPPED, reason)
            return "would_skip"
        pdf: bytes | None = None
        try:
            if self.document == "pdf":
                pdf = self._pdf_bytes(document)
            body = self.build(document, _base64(pdf) if pdf is not None else None, context)
        except RemoteRejectedError as exc:
            reason = f"PDF download from the ERP refused (HTTP {exc.status}): {exc.message}"
        except (PayloadError, ValueError) as exc:
            reason = f"cannot build the {self.label}: {exc}"
        else:
            endpoint, key = self.endpoint_and_key(number)
            sent = body.to_json_dict()  # type: ignore[attr-defined]
            if pdf is not None:
                sent.pop(self.pdf_field, None)
                self.log.info(
                    "DRY RUN %s %s: %s would carry the PDF, %d bytes, sha256 %s", self.label, shown, self.pdf_field, len(pdf),
                    hashlib.sha256(pdf).hexdigest(),
                )
            self.log.info(
                "DRY RUN would POST %s key %s body %s", endpoint, key, json.dumps(sent, sort_keys=True, ensure_ascii=False)
            )
            return "would_upload"
        self.log.info(
            "DRY RUN would mark %s %s %s and dead-letter it: %s", self.label, shown, DOC_UPLOAD_FAILED, printable(reason)
        )
        return "would_fail"

    def _fail(self, number: str, reason: str) -> str:
        """Mark the document failed until a person re-triggers it, and dead-letter it - both or neither."""
        reason = printable(reason)[:2000]
        with self.ledger.transaction():
            self.ledger.update_document(self.doc_type, number, state=DOC_UPLOAD_FAILED, reason=reason, batch_id=self.batch_id)
            self.ledger.record_dead_letter(stage=self.stage, reason=f"{self.label} {number}: {reason}", business_key=number)
        self.log.error("%s %s: %s", self.label, number, reason)
        return DOC_UPLOAD_FAILED

    def _defer(self, number: str, reason: str) -> None:
        """Keep the document ready (a re-triggered failed one too), so the next run tries again, and say why."""
        self.ledger.update_document(
            self.doc_type, number, state=DOC_READY, reason=printable(f"waiting for the next run: {reason}")[:2000],
            batch_id=self.batch_id,
        )


def _earlier_attempts(item: QueuedDocument) -> int:
    """Failed attempts before the current one: the count its page read (``_upload_one`` then counted this one)."""
    return int(item.document["upload_attempts"] or 0)


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
