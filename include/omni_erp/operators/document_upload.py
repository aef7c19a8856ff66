"""The shared base of the operators that upload the ledger's ready ERP documents to Increff Omni, each exactly once."""

from __future__ import annotations

import json
from collections import Counter
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from omni_erp import settings
from omni_erp.exceptions import PayloadError, RemoteRejectedError, RemoteUnavailableError
from omni_erp.operators.base import ErpOperator, _error_text, not_about_the_item
from omni_erp.operators.document_feed import as_bool, printable
from omni_erp.states import (
    DOC_READY,
    DOC_SKIPPED,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
)
from omni_erp.timeutil import now

if TYPE_CHECKING:
    from airflow.sdk import Context
    from pydantic import BaseModel

    from omni_erp.hooks.omni import OmniHook

DOCUMENT_MODES = ("url", "pdf")


class OmniDocumentUploadOperator(ErpOperator):
    """Upload every ready document of one type to Omni, once per document number.

    The state is checked right before each call, so a retried task or a re-run sends nothing that
    was already uploaded. Omni's 4xx, or a body that cannot be built from the document, marks the
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

    def build(self, document: dict[str, Any], pdf_base64: str | None) -> BaseModel:
        """The Omni body for a ledger document; raises ``PayloadError``/``ValueError`` when it cannot be built."""
        raise NotImplementedError

    def send(self, body: Any) -> None:
        """POST the body to Omni through the hook."""
        raise NotImplementedError

    def endpoint_and_key(self, number: str) -> tuple[str, str]:
        """Omni's endpoint for this document type and the key that names the upload in logs (``keys``)."""
        raise NotImplementedError

    def skip_reason(self, document: dict[str, Any]) -> str | None:
        """Why a ready document must not be uploaded any more (None: upload it)."""
        return None

    def execute(self, context: Context) -> dict[str, Any]:
        if self.document not in DOCUMENT_MODES:
            raise ValueError(f"document must be one of {DOCUMENT_MODES}, got {self.document!r}")
        scope = self.scope
        # A run for some orders or a window re-sends what Omni rejected of them too, as retry_failed does.
        retry = as_bool(self.retry_failed) or scope.selective
        states = [DOC_READY, DOC_UPLOAD_FAILED] if retry else [DOC_READY]
        if scope.selective:
            documents = self.ledger.select_documents(
                self.doc_type, states=states, order_codes=scope.order_codes, window=scope.window
            )
            self.log.info(
                "%d %s(s) of this run's scope to upload, rejected ones included: %s", len(documents), self.label,
                ", ".join(printable(d["doc_number"]) for d in documents[:20]) + (" ..." if len(documents) > 20 else ""),
            )
        else:
            documents = self.ledger.documents(self.doc_type, states=states)
        if scope.dry_run:
            return self._dry_run(documents)
        return self.process_each(
            [d["doc_number"] for d in documents],
            lambda number: self._upload_one(number, states),
            defer=self._defer,
            give_up=self._fail,
            attempts=self._earlier_attempts,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )

    def _upload_one(self, number: str, states: list[str]) -> str:
        ledger = self.ledger
        document = ledger.get_document(self.doc_type, number)
        if document is None or document["state"] not in states:
            return "skipped"  # uploaded or changed since the list was read: never send twice
        if (reason := self.skip_reason(document)) is not None:
            ledger.update_document(self.doc_type, number, state=DOC_SKIPPED, reason=reason, batch_id=self.batch_id)
            self.log.info("%s %s not uploaded: %s", self.label, number, reason)
            return DOC_SKIPPED
        # Counted before the body is built, so a document that keeps failing in any step reaches the bound.
        ledger.update_document(
            self.doc_type, number, upload_attempts=document["upload_attempts"] + 1, batch_id=self.batch_id
        )
        try:
            pdf = self._pdf(document) if self.document == "pdf" else None
            body = self.build(document, pdf)
        except RemoteRejectedError as exc:
            return self._fail(number, f"PDF download from the ERP refused (HTTP {exc.status}): {exc.message}")
        except (PayloadError, ValueError) as exc:
            return self._fail(number, f"cannot build the {self.label}: {exc}")
        try:
            self.send(body)
        except RemoteRejectedError as exc:
            code = f"{exc.code}: " if exc.code else ""
            return self._fail(number, f"Omni rejected the {self.label} (HTTP {exc.status}) {code}{exc.message}")
        ledger.update_document(
            self.doc_type, number, state=DOC_UPLOADED, uploaded_at=now(), reason=None, batch_id=self.batch_id
        )
        return DOC_UPLOADED

    def _pdf(self, document: dict[str, Any]) -> str:
        """Base64 of the document's PDF, downloaded from the ERP's ``pdfUrl`` through the ERP adapter."""
        return _base64(self._pdf_bytes(document))

    def _pdf_bytes(self, document: dict[str, Any]) -> bytes:
        url = document["payload"].get("pdfUrl")
        if not url:
            raise PayloadError("the ERP gave no pdfUrl")
        return self.erp.download_pdf(url, key=f"pdf:{document['doc_number']}")

    # --- dry run ------------------------------------------------------------------------------------

    def _dry_run(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        """Log what uploading ``documents`` would send and record; send nothing, write nothing.

        Each document on its own, as a real run: a problem is logged and counted, never stops the rest, and
        never fails the task (the dry run's answer is the log); only a ledger outage or an Airflow error does.
        """
        counts: Counter[str] = Counter()
        for document in documents:
            number = printable(document["doc_number"])
            try:
                outcome = self._preview_one(document)
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
        summary = {"batch_id": self.batch_id, "dry_run": True, "selected": len(documents), **{k: counts[k] for k in sorted(counts)}}
        self.log.info("DRY RUN %s: %s (nothing was sent or recorded)", self.task_id, summary)
        return summary

    def _preview_one(self, document: dict[str, Any]) -> str:
        """The body ``_upload_one`` would send for one document, logged; or why it would not send one."""
        import hashlib

        number = document["doc_number"]
        shown = printable(number)
        if (reason := self.skip_reason(document)) is not None:
            self.log.info("DRY RUN would not upload %s %s (would mark it %s): %s", self.label, shown, DOC_SKIPPED, reason)
            return "would_skip"
        pdf: bytes | None = None
        try:
            if self.document == "pdf":
                pdf = self._pdf_bytes(document)
            body = self.build(document, _base64(pdf) if pdf is not None else None)
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

    def _earlier_attempts(self, number: str) -> int:
        """Failed attempts before the current one (``_upload_one`` counted the current one before it failed)."""
        document = self.ledger.get_document(self.doc_type, number)
        return max(0, (document["upload_attempts"] if document else 0) - 1)

    def _defer(self, number: str, reason: str) -> None:
        """Keep the document ready (a re-triggered failed one too), so the next run tries again, and say why."""
        self.ledger.update_document(
            self.doc_type, number, state=DOC_READY, reason=printable(f"waiting for the next run: {reason}")[:2000],
            batch_id=self.batch_id,
        )


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
