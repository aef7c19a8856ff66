"""Documents exchanged with Increff Omni (domain.md sections 3.1-3.4).

What we *receive* (postings) is checked against Increff's documented types (issue 6), so nothing
absurd reaches the ERP, while real Increff payloads pass:

- ``messageId`` is a Java ``Long``: a positive JSON integer up to 2^63-1. A string of ASCII digits
  is also accepted and canonicalised (``"0900001"`` -> ``"900001"``); signs, spaces, other digits,
  booleans, floats and anything out of range are refused. The model keeps it as text.
- Strings hold at most 255 characters (Increff's limit) and no control (Unicode Cc), format (Cf:
  bidirectional overrides and isolates, LRM/RLM/ALM, zero-width characters, BOM), surrogate or
  line/paragraph-separator characters: they forge log lines, spoof codes and break HTTP headers.
  Any other Unicode (Devanagari, accents, emoji) is valid. Surrounding whitespace is trimmed.
- Quantities are JSON integers from 0 to ``settings.max_line_quantity()`` (read per call); booleans,
  floats and strings are not numbers; ``null`` is an error where the quantity is required
  (``orderedQuantity``, ``shipmentItems[].quantity``) and 0 where it is optional (``cancelledQuantity``).
- Money is a non-negative JSON number below 10^10, rounded to 4 decimals where a double's noise gives more
  (``120.00000000000001``); booleans and strings are refused.
- Flags are ``true``/``false`` (or those two words as strings, as Increff sends ``isSplitRequired``).
- Every optional field accepts ``null`` as its default; unknown fields are ignored (and kept in the
  stored raw posting).
- ``eventType`` must be one Increff documents (``settings.KNOWN_EVENTS``). Per event type the arrays
  the flows need must be present and non-empty: CREATE and COMPLETE ``orderItems``, COMPLETE
  ``shipments``, every shipment its ``shipmentItems``, ``RETURN_ORDER_COMPLETE`` its ``items``.
  Line, shipment and return-item codes are unique within a posting.

What we *send* (invoices, credit notes) is strict: unknown fields are forbidden and the
"exactly one of PDF or URL" rule is checked before anything leaves the building.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from omni_erp import settings
from omni_erp.settings import MAX_STRING_LENGTH

JAVA_LONG_MAX = 2**63 - 1
MAX_MONEY = Decimal(10) ** 10  # per unit or line; far above any Ajio order, far below an overflow
_MAX_MONEY_INT = int(MAX_MONEY)
_FOUR_PLACES = Decimal("0.0001")
# Categories refused in received strings: control, format (bidi, zero-width, BOM), surrogates, line/paragraph separators.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ASCII_DIGITS = re.compile(r"[0-9]+")
_CEILING = "max_line_quantity"  # key of the validation context holding settings.max_line_quantity()


def _kind(value: Any) -> str:
    """How a JSON value reads in an error message (never the value itself: it may be huge or hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def forbidden_character(value: str) -> str | None:
    """The first character of ``value`` a received string may not hold, described as ``U+202E (NAME)``."""
    if value.isprintable():  # fast path: printable strings hold none of the forbidden categories
        return None
    for char in value:
        if unicodedata.category(char) in FORBIDDEN_CATEGORIES:
            name = unicodedata.name(char, "")
            return f"U+{ord(char):04X}" + (f" ({name})" if name else "")
    return None


def _safe_text(value: Any) -> Any:
    # Runs before trimming, so a trailing newline or bidi mark is refused rather than silently cut.
    if isinstance(value, str) and not value.isprintable():  # printable: none of the forbidden categories
        found = forbidden_character(value)
        if found:
            raise PydanticCustomError(
                "forbidden_character",
                "contains {character}; control, format and bidirectional characters are not accepted",
                {"character": found},
            )
    return value


def _message_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PydanticCustomError(
            "message_id", "must be a positive integer (Java Long), not {kind}", {"kind": _kind(value)}
        )
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH or not _ASCII_DIGITS.fullmatch(value):
            raise PydanticCustomError("message_id", "must be a positive integer (Java Long); a string may hold only the digits 0-9")
        value = int(value)
    if not 1 <= value <= JAVA_LONG_MAX:
        raise PydanticCustomError("message_id", "must be a positive integer (Java Long), from 1 to 2^63-1")
    return str(value)


def _quantity(value: Any, info: ValidationInfo) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("quantity", "must be a whole number (JSON integer), not {kind}", {"kind": _kind(value)})
    # parse_posting reads the setting once per posting; other callers read it here, per quantity.
    ceiling = info.context.get(_CEILING) if isinstance(info.context, dict) else None
    if ceiling is None:
        try:
            ceiling = settings.max_line_quantity()
        except ValueError as exc:  # a deployment error, not bad data: must not become a validation error
            raise RuntimeError(str(exc)) from exc
    if not 0 <= value <= ceiling:
        raise PydanticCustomError("quantity", "must be between 0 and {ceiling}", {"ceiling": ceiling})
    return value


def _money(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("money", "must be a number, not {kind}", {"kind": _kind(value)})
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("money", "must be a finite number")
    if not 0 <= value < _MAX_MONEY_INT:  # an int bound: comparing a float or int with a Decimal costs more
        raise PydanticCustomError("money", "must be from 0 to less than {limit}", {"limit": _MAX_MONEY_INT})
    if not isinstance(value, float):
        return Decimal(value)
    # str() first: a float's shortest representation, so 1120.1 stays 1120.1 and not its binary expansion.
    amount = Decimal(str(value))
    exponent = amount.as_tuple().exponent  # an int: NaN and infinities were refused above
    if isinstance(exponent, int) and exponent < -4:
        # Amounts Increff computes in doubles arrive as e.g. 120.00000000000001: float noise, not data.
        amount = amount.quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)
    return amount


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise PydanticCustomError("flag", "must be true or false, not {kind}", {"kind": _kind(value)})


Str = Annotated[str, Field(max_length=MAX_STRING_LENGTH), BeforeValidator(_safe_text)]
RequiredStr = Annotated[str, Field(min_length=1, max_length=MAX_STRING_LENGTH), BeforeValidator(_safe_text)]
StatusStr = Annotated[str, Field(max_length=32), BeforeValidator(_safe_text)]  # enum-like values the ledger keeps in 32
MessageId = Annotated[str, PlainValidator(_message_id)]
Quantity = Annotated[int, PlainValidator(_quantity)]
Money = Annotated[Decimal, Field(ge=0, lt=MAX_MONEY), BeforeValidator(_money)]
Flag = Annotated[bool, PlainValidator(_flag)]


def _no_duplicates(codes: list[str], what: str) -> None:
    seen: set[str] = set()
    for code in codes:
        if code in seen:
            raise PydanticCustomError(
                "duplicate_code", "{what} {code} appears more than once", {"what": what, "code": ascii(code[:64])}
            )
        seen.add(code)


def _required_items(present: bool, field: str, event_type: str) -> None:
    if not present:
        raise PydanticCustomError(
            "required_array", "{field}: at least one entry is required for {event_type}", {"field": field, "event_type": event_type}
        )


class _Received(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        """Increff sends ``null`` for optional fields it has no value for: treat it as absent."""
        if not isinstance(data, dict) or None not in data.values():  # most objects: no null to look at
            return data
        optional = _optional_keys(cls)
        if any(data.get(key, 0) is None for key in optional):
            return {key: value for key, value in data.items() if not (value is None and key in optional)}
        return data


@functools.cache
def _optional_keys(model: type[BaseModel]) -> frozenset[str]:
    """Names and aliases of ``model``'s optional fields."""
    return frozenset(key for name, info in model.model_fields.items() if not info.is_required() for key in (name, info.alias))


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
    tax_items: list[TaxItem] = Field(default_factory=list, alias="taxItems")


class Shipment(_Received):
    shipment_code: RequiredStr = Field(alias="shipmentCode")
    shipment_status: Str | None = Field(None, alias="shipmentStatus")
    external_invoice_id: Str | None = Field(None, alias="externalInvoiceId")
    irn: Str | None = None
    shipment_items: list[ShipmentItem] = Field(alias="shipmentItems", min_length=1)


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


class OrderCustomAttributes(_Received):
    """``orderCustomAttributes``: ``attribute1``..``attribute10`` are strings (the Ajio PO is one of them)."""

    model_config = ConfigDict(extra="allow")

    attribute1: Str | None = None
    attribute2: Str | None = None
    attribute3: Str | None = None
    attribute4: Str | None = None
    attribute5: Str | None = None
    attribute6: Str | None = None
    attribute7: Str | None = None
    attribute8: Str | None = None
    attribute9: Str | None = None
    attribute10: Str | None = None
    currency: Str | None = None


def _known_event_type(value: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise PydanticCustomError(
            "unknown_event_type",
            "unknown event type {value}; expected one of {allowed}",
            {"value": ascii(value[:64]), "allowed": ", ".join(sorted(allowed))},
        )
    return value


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
    is_priority: Flag = Field(False, alias="isPriority")
    order_items: list[OrderItem] = Field(default_factory=list, alias="orderItems")
    shipments: list[Shipment] = Field(default_factory=list, alias="shipments")
    # Validated for the types of the attributes we know; every other key is kept as sent (extra="allow").
    order_custom_attributes: OrderCustomAttributes | None = Field(None, alias="orderCustomAttributes")

    @field_validator("event_type")
    @classmethod
    def _outward_event_type(cls, value: str) -> str:
        return _known_event_type(value, settings.OUTWARD_EVENTS)

    @model_validator(mode="after")
    def _shape_of_event(self) -> OutwardOrderPosting:
        if self.event_type in (settings.EVENT_CREATE, settings.EVENT_COMPLETE):
            _required_items(bool(self.order_items), "orderItems", self.event_type)
        if self.event_type == settings.EVENT_COMPLETE:
            _required_items(bool(self.shipments), "shipments", self.event_type)
        _no_duplicates([item.order_item_code for item in self.order_items], "orderItems: orderItemCode")
        _no_duplicates([shipment.shipment_code for shipment in self.shipments], "shipments: shipmentCode")
        return self

    @property
    def business_key(self) -> str:
        return self.order_code


class ReturnItem(_Received):
    """One returned unit (Increff return orders carry one item per unit)."""

    item_code: RequiredStr = Field(alias="itemCode")
    channel_sku_code: RequiredStr = Field(alias="channelSkuCode")
    qc_status: StatusStr | None = Field(None, alias="qcStatus")  # PASS | FAIL
    qc_reason: Str | None = Field(None, alias="qcReason")
    return_reason: Str | None = Field(None, alias="returnReason")
    selling_price_per_unit: Money = Field(Decimal(0), alias="sellingPricePerUnit")
    is_excess: Flag = Field(False, alias="isExcess")


class ReturnOrderPosting(_Received):
    """Return-order-processed posting (customer return or RTO), domain.md section 3.4."""

    message_id: MessageId = Field(alias="messageId")
    event_type: RequiredStr = Field(settings.EVENT_RETURN, alias="eventType")
    event_time: Str | None = Field(None, alias="eventTime")
    return_order_code: RequiredStr = Field(alias="returnOrderCode")
    forward_order_code: RequiredStr = Field(alias="forwardOrderCode")
    return_order_type: Str | None = Field(None, alias="returnOrderType")
    location_code: Str | None = Field(None, alias="locationCode")
    channel_name: Str | None = Field(None, alias="channelName")
    items: list[ReturnItem] = Field(default_factory=list)

    @field_validator("event_type")
    @classmethod
    def _return_event_type(cls, value: str) -> str:
        return _known_event_type(value, settings.RETURN_EVENTS)

    @model_validator(mode="after")
    def _shape_of_event(self) -> ReturnOrderPosting:
        if self.event_type == settings.EVENT_RETURN:
            _required_items(bool(self.items), "items", self.event_type)
        _no_duplicates([item.item_code for item in self.items], "items: itemCode")
        return self

    @property
    def business_key(self) -> str:
        return self.return_order_code


def parse_posting(
    data: dict[str, Any], *, max_line_quantity: int | None = None
) -> OutwardOrderPosting | ReturnOrderPosting:
    """Pick the posting shape (domain.md decision 2) and validate it.

    Return postings are recognised by ``eventType`` starting with ``RETURN_ORDER`` or, when
    ``eventType`` is absent or null, by the presence of ``returnOrderCode``.

    :param max_line_quantity: ``settings.max_line_quantity()`` when the caller has read it already.
    :raises pydantic.ValidationError: naming each field that does not match Increff's types.
    """
    context: dict[str, int] | None = None
    if max_line_quantity is not None:
        context = {_CEILING: max_line_quantity}
    else:
        try:
            context = {_CEILING: settings.max_line_quantity()}
        except ValueError:
            pass  # each quantity reads the setting again and raises (see _quantity)
    event_type = data.get("eventType")
    if (isinstance(event_type, str) and event_type.strip().startswith("RETURN_ORDER")) or (
        event_type is None and "returnOrderCode" in data
    ):
        return ReturnOrderPosting.model_validate(data, context=context)
    return OutwardOrderPosting.model_validate(data, context=context)


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
