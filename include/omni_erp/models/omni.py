"""Documents exchanged with Increff Omni (domain.md sections 3.1-3.4).

What we *receive* (postings) is parsed leniently: unknown fields are ignored, nulls become
defaults, booleans may arrive as strings, strings are capped at Increff's 255 characters.
What we *send* (invoices, credit notes) is strict: unknown fields are forbidden and the
"exactly one of PDF or URL" rule is checked before anything leaves the building.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from omni_erp.settings import MAX_STRING_LENGTH


def _none_to_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _none_to_zero(value: Any) -> Any:
    return 0 if value is None or value == "" else value


def _id_to_str(value: Any) -> Any:
    # messageId is a Long in Increff's samples; we key on its text form.
    if isinstance(value, bool):
        raise ValueError("must be a number or a string")
    if isinstance(value, int):
        return str(value)
    return value


Str = Annotated[str, Field(max_length=MAX_STRING_LENGTH)]
RequiredStr = Annotated[str, Field(min_length=1, max_length=MAX_STRING_LENGTH)]
MessageId = Annotated[RequiredStr, BeforeValidator(_id_to_str)]
Quantity = Annotated[int, Field(ge=0), BeforeValidator(_none_to_zero)]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4), BeforeValidator(_none_to_zero)]
ListOf = lambda item: Annotated[list[item], BeforeValidator(_none_to_empty_list)]  # noqa: E731


class _Received(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)


class TaxItem(_Received):
    type: Str | None = None
    rate: Money = Decimal(0)
    tax_per_unit: Money = Field(Decimal(0), alias="taxPerUnit")
    tax_total: Money = Field(Decimal(0), alias="taxTotal")


class ShipmentItem(_Received):
    order_item_code: Str | None = Field(None, alias="orderItemCode")
    channel_sku_code: RequiredStr = Field(alias="channelSkuCode")
    quantity: Quantity
    selling_price_per_unit: Money = Field(Decimal(0), alias="sellingPricePerUnit")
    tax_items: ListOf(TaxItem) = Field(default_factory=list, alias="taxItems")


class Shipment(_Received):
    shipment_code: RequiredStr = Field(alias="shipmentCode")
    shipment_status: Str | None = Field(None, alias="shipmentStatus")
    external_invoice_id: Str | None = Field(None, alias="externalInvoiceId")
    irn: Str | None = None
    shipment_items: ListOf(ShipmentItem) = Field(default_factory=list, alias="shipmentItems")


class OrderItem(_Received):
    order_item_code: RequiredStr = Field(alias="orderItemCode")
    channel_sku_code: RequiredStr = Field(alias="channelSkuCode")
    barcode: Str | None = None
    ordered_quantity: Quantity = Field(alias="orderedQuantity")
    cancelled_quantity: Quantity = Field(0, alias="cancelledQuantity")
    selling_price_per_unit: Money = Field(Decimal(0), alias="sellingPricePerUnit")

    @model_validator(mode="after")
    def _cancelled_within_ordered(self) -> OrderItem:
        if self.cancelled_quantity > self.ordered_quantity:
            raise ValueError(
                f"cancelledQuantity {self.cancelled_quantity} exceeds orderedQuantity {self.ordered_quantity}"
            )
        return self

    @property
    def quantity_to_invoice(self) -> int:
        """domain.md decision 4: ordered minus cancelled."""
        return self.ordered_quantity - self.cancelled_quantity


class OutwardOrderPosting(_Received):
    """``OUTWARD_ORDER_*`` posting (CREATE, CANCEL, COMPLETE and the ignored ones)."""

    message_id: MessageId = Field(alias="messageId")
    event_type: RequiredStr = Field(alias="eventType")
    event_time: Str | None = Field(None, alias="eventTime")
    order_code: RequiredStr = Field(alias="orderCode")
    parent_order_code: Str | None = Field(None, alias="parentOrderCode")
    channel_name: Str | None = Field(None, alias="channelName")
    partner_code: Str | None = Field(None, alias="partnerCode")
    location_code: Str | None = Field(None, alias="locationCode")
    order_time: Str | None = Field(None, alias="orderTime")
    is_priority: bool = Field(False, alias="isPriority")
    order_items: ListOf(OrderItem) = Field(default_factory=list, alias="orderItems")
    shipments: ListOf(Shipment) = Field(default_factory=list, alias="shipments")
    order_custom_attributes: dict[str, Any] | None = Field(None, alias="orderCustomAttributes")

    @property
    def business_key(self) -> str:
        return self.order_code


class ReturnItem(_Received):
    """One returned unit (Increff return orders carry one item per unit)."""

    item_code: RequiredStr = Field(alias="itemCode")
    channel_sku_code: RequiredStr = Field(alias="channelSkuCode")
    qc_status: Str | None = Field(None, alias="qcStatus")
    qc_reason: Str | None = Field(None, alias="qcReason")
    return_reason: Str | None = Field(None, alias="returnReason")
    selling_price_per_unit: Money = Field(Decimal(0), alias="sellingPricePerUnit")
    is_excess: bool = Field(False, alias="isExcess")


class ReturnOrderPosting(_Received):
    """Return-order-processed posting (customer return or RTO), domain.md section 3.4."""

    message_id: MessageId = Field(alias="messageId")
    event_type: RequiredStr = Field("RETURN_ORDER_COMPLETE", alias="eventType")
    event_time: Str | None = Field(None, alias="eventTime")
    return_order_code: RequiredStr = Field(alias="returnOrderCode")
    forward_order_code: RequiredStr = Field(alias="forwardOrderCode")
    return_order_type: Str | None = Field(None, alias="returnOrderType")
    location_code: Str | None = Field(None, alias="locationCode")
    channel_name: Str | None = Field(None, alias="channelName")
    items: ListOf(ReturnItem) = Field(default_factory=list)

    @property
    def business_key(self) -> str:
        return self.return_order_code


def parse_posting(data: dict[str, Any]) -> OutwardOrderPosting | ReturnOrderPosting:
    """Pick the posting shape (domain.md decision 2) and validate it.

    Return postings are recognised by ``eventType`` starting with ``RETURN_ORDER`` or, when
    ``eventType`` is absent, by the presence of ``returnOrderCode``.
    """
    event_type = data.get("eventType")
    if (isinstance(event_type, str) and event_type.startswith("RETURN_ORDER")) or (
        not event_type and "returnOrderCode" in data
    ):
        return ReturnOrderPosting.model_validate(data)
    return OutwardOrderPosting.model_validate(data)


# --- what we send to Omni (strict) -------------------------------------------------------


class _Sent(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class InvoiceLine(_Sent):
    channel_sku_code: RequiredStr = Field(alias="channelSkuCode")
    quantity: int = Field(gt=0)


class B2BInvoice(_Sent):
    """Body of ``POST /ajio-vms/b2bInvoice/posting`` (domain.md 3.2)."""

    invoice_number: RequiredStr = Field(alias="invoiceNumber")
    invoice_date: RequiredStr = Field(alias="invoiceDate")
    forward_purchase_order: RequiredStr = Field(alias="forwardPurchaseOrder")
    irn_number: Annotated[str, Field(min_length=64, max_length=64)] = Field(alias="irnNumber")
    qr_code: Annotated[str, Field(min_length=1)] = Field(alias="qrCode")
    is_partial_invoice: bool = Field(alias="isPartialInvoice")
    invoice_line_entries: list[InvoiceLine] | None = Field(None, alias="invoiceLineEntries")
    invoice_pdf: str | None = Field(None, alias="invoicePdf")
    invoice_url: str | None = Field(None, alias="invoiceURL")

    @model_validator(mode="after")
    def _rules(self) -> B2BInvoice:
        if (self.invoice_pdf is None) == (self.invoice_url is None):
            raise ValueError("exactly one of invoicePdf and invoiceURL is required")
        if self.is_partial_invoice and not self.invoice_line_entries:
            raise ValueError("invoiceLineEntries are required when isPartialInvoice is true")
        if not self.is_partial_invoice and self.invoice_line_entries:
            raise ValueError("invoiceLineEntries are only sent when isPartialInvoice is true")
        return self


class CreditNote(_Sent):
    """Body of ``POST /ajio-vms/creditNote/posting`` (domain.md 3.3)."""

    credit_note_number: RequiredStr = Field(alias="creditNoteNumber")
    return_order_id: RequiredStr = Field(alias="returnOrderId")
    irn_number: Annotated[str, Field(min_length=64, max_length=64)] = Field(alias="irnNumber")
    ack_number: RequiredStr = Field(alias="ackNumber")
    ack_date: RequiredStr = Field(alias="ackDate")
    signed_qr_code: Annotated[str, Field(min_length=1)] = Field(alias="signedQrCode")
    signed_credit_note_pdf: str | None = Field(None, alias="signedCreditNotePdf")
    credit_note_pdf_url: str | None = Field(None, alias="creditNotePdfUrl")

    @model_validator(mode="after")
    def _one_document(self) -> CreditNote:
        if (self.signed_credit_note_pdf is None) == (self.credit_note_pdf_url is None):
            raise ValueError("exactly one of signedCreditNotePdf and creditNotePdfUrl is required")
        return self


class OmniErrorBody(BaseModel):
    """Increff's error shape for its own endpoints: ``{code, message, description}``."""

    model_config = ConfigDict(extra="ignore")

    code: str | None = None
    message: str | None = None
    description: str | None = None

    def text(self) -> str:
        return " - ".join(part for part in (self.code, self.message, self.description) if part) or "no details"
