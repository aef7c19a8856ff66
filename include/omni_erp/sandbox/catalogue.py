"""Indian fashion SKUs and delivery addresses shared by the posting generator and the ERP sandbox."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One catalogue SKU as Ajio and the seller's item master know it."""

    channel_sku_code: str  # Ajio's 12-digit SKU id
    barcode: str           # EAN-13
    name: str
    hsn_code: str
    price: float           # tax-inclusive selling price per unit (domain.md decision 4)


def ean13(body: str) -> str:
    """Append the EAN-13 check digit to 12 digits."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


CATALOGUE: tuple[Item, ...] = (
    Item("460491724004", ean13("890712345678"), "Men Slim Fit Oxford Shirt", "6205", 1120.0),
    Item("460491724011", ean13("890712345679"), "Men Regular Fit Jeans", "6203", 3299.0),
    Item("460512338007", ean13("890712345680"), "Women Printed A-Line Kurta", "6204", 899.0),
    Item("460512338014", ean13("890712345681"), "Women Anarkali Kurta Set", "6204", 2499.0),
    Item("460633590002", ean13("890712345682"), "Men Crew-Neck Cotton T-shirt", "6109", 399.0),
    Item("460633590019", ean13("890712345683"), "Women Palazzo Pants", "6204", 749.0),
    Item("460718442006", ean13("890712345684"), "Men Nehru Jacket", "6203", 1899.0),
    Item("460718442013", ean13("890712345685"), "Women Embroidered Dupatta", "6214", 599.0),
    Item("460805117001", ean13("890712345686"), "Men Running Shoes", "6404", 4999.0),
    Item("460805117018", ean13("890712345687"), "Women Block Heel Sandals", "6402", 1499.0),
    Item("460921660004", ean13("890712345688"), "Unisex Canvas Sneakers", "6404", 1799.0),
    Item("460921660011", ean13("890712345689"), "Boys Cotton Kurta Pyjama Set", "6203", 1299.0),
)

_BY_SKU = {item.channel_sku_code: item for item in CATALOGUE}

# HSN the ERP sandbox uses for SKUs it does not know (knitted T-shirts).
DEFAULT_HSN = "6109"

# (state as Increff sends it, delivery pincode)
DESTINATIONS: tuple[tuple[str, str], ...] = (
    ("KARNATAKA", "560037"),
    ("KARNATAKA", "560102"),
    ("MAHARASHTRA", "400053"),
    ("MAHARASHTRA", "411014"),
    ("DELHI", "110017"),
    ("TAMIL NADU", "600040"),
    ("TELANGANA", "500081"),
    ("WEST BENGAL", "700091"),
    ("GUJARAT", "380015"),
    ("UTTAR PRADESH", "226010"),
    ("KERALA", "682024"),
    ("RAJASTHAN", "302017"),
)

AJIO_DCS = ("AJIO-BLR-DC", "AJIO-BHW-DC", "AJIO-GGN-DC", "AJIO-KOL-DC")


def hsn_for(channel_sku_code: str) -> str:
    """HSN code from the catalogue, or :data:`DEFAULT_HSN` for unknown SKUs."""
    item = _BY_SKU.get(channel_sku_code)
    return item.hsn_code if item else DEFAULT_HSN
