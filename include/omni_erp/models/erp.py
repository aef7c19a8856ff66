"""Documents of the generic JSON REST ERP contract (``include/omni_erp/contracts/erp_rest.yaml``).

Money is ``Decimal`` (JSON numbers or strings are accepted); quantities are whole units.
Requests are strict (``extra="forbid"``), responses lenient (``extra="ignore"``) so that an ERP
adding fields never breaks us.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, PrivateAttr, ValidationError, model_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class DocumentLine(BaseModel):
    """A line of any ERP document: SKU, units and tax-inclusive unit price."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    line_code: str | None = Field(None, alias="lineCode")
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    unit_price: Decimal = Field(alias="unitPrice", ge=0)


class SalesOrderRequest(_Request):
    """``POST /api/v1/sales-orders`` with header ``Idempotency-Key: create:<orderCode>``."""

    order_code: str = Field(alias="orderCode", min_length=1)
    po_number: str = Field(alias="poNumber", min_length=1)
    buyer_code: str = Field(alias="buyerCode", min_length=1)
    location_code: str | None = Field(None, alias="locationCode")
    order_date: str | None = Field(None, alias="orderDate")
    lines: list[DocumentLine] = Field(min_length=1)
    total_amount: Decimal = Field(alias="totalAmount", ge=0)


class SalesOrder(_Response):
    sales_order_id: str = Field(alias="salesOrderId")
    order_code: str = Field(alias="orderCode")
    status: str
    created_at: str | None = Field(None, alias="createdAt")


class _RegisteredDocument(_Response):
    """What every document registered at the IRP carries: its feed position, IRN, ack, signed QR, PDF, lines."""

    seq: int
    order_code: str = Field(alias="orderCode")
    irn: str
    ack_number: str = Field(alias="ackNumber")
    ack_date: str = Field(alias="ackDate")
    signed_qr_code: str = Field(alias="signedQrCode")
    pdf_url: str | None = Field(None, alias="pdfUrl")
    lines: list[DocumentLine]
    total_value: Decimal = Field(alias="totalValue")


class EInvoice(_RegisteredDocument):
    """An e-invoice (document type INV) the ERP registered at the IRP for a sales order."""

    invoice_number: str = Field(alias="invoiceNumber")
    invoice_date: str = Field(alias="invoiceDate")
    sales_order_id: str = Field(alias="salesOrderId")
    po_number: str = Field(alias="poNumber")
    status: str = "ACTIVE"


@dataclass(frozen=True)
class UnreadableDocument:
    """A feed item the contract does not allow, kept as the ERP sent it with what is wrong with it."""

    raw: Any
    problem: str

    def get(self, alias: str) -> Any:
        """A field of the raw item (None when absent or when the item is not an object)."""
        return self.raw.get(alias) if isinstance(self.raw, dict) else None


class _FeedPage(_Response):
    """One page of a document feed. An item the contract does not allow is set aside in ``unreadable``
    instead of failing the page: one bad document must not hide the others (or stop the feed for good)."""

    item_model: ClassVar[type[_RegisteredDocument]]
    _unreadable: list[UnreadableDocument] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _set_aside_unreadable_items(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        unreadable: list[UnreadableDocument] = []
        if isinstance(data, dict) and isinstance(data.get("items"), list):
            readable = []
            for raw in data["items"]:
                try:
                    readable.append(cls.item_model.model_validate(raw))
                except ValidationError as exc:
                    problems = (f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
                    unreadable.append(UnreadableDocument(raw, "; ".join(problems)[:1000]))
            data = {**data, "items": readable}
        page = handler(data)
        page._unreadable = unreadable
        return page

    @property
    def unreadable(self) -> list[UnreadableDocument]:
        return self._unreadable


class EInvoicePage(_FeedPage):
    item_model = EInvoice

    items: list[EInvoice]
    next_cursor: int = Field(alias="nextCursor")


class ReturnOrderRequest(_Request):
    """``POST /api/v1/return-orders`` with header ``Idempotency-Key: return:<returnOrderCode>``."""

    return_order_code: str = Field(alias="returnOrderCode", min_length=1)
    order_code: str = Field(alias="orderCode", min_length=1)
    invoice_number: str = Field(alias="invoiceNumber", min_length=1)
    reason: str = Field(min_length=1)
    lines: list[DocumentLine] = Field(min_length=1)
    # False on the RMS credit-note path (issue 12): book the return, raise no e-credit note. Absent = raise one.
    raise_credit_note: bool | None = Field(None, alias="raiseCreditNote")


class ReturnOrder(_Response):
    return_order_id: str = Field(alias="returnOrderId")
    return_order_code: str = Field(alias="returnOrderCode")
    status: str


class ErpCreditNote(_RegisteredDocument):
    """A credit note (document type CRN) the ERP registered at the IRP."""

    credit_note_number: str = Field(alias="creditNoteNumber")
    credit_note_date: str = Field(alias="creditNoteDate")
    return_order_code: str | None = Field(None, alias="returnOrderCode")
    invoice_number: str = Field(alias="invoiceNumber")


class CreditNotePage(_FeedPage):
    item_model = ErpCreditNote

    items: list[ErpCreditNote]
    next_cursor: int = Field(alias="nextCursor")


class ErpErrorBody(BaseModel):
    """The contract's error shape: ``{"error": {"code", "message"}}``."""

    model_config = ConfigDict(extra="ignore")

    error: dict[str, Any] | None = None

    def text(self) -> str:
        if not self.error:
            return "no details"
        return " - ".join(str(v) for v in (self.error.get("code"), self.error.get("message")) if v)
