"""Time handling: store UTC, send Omni times in IST with milliseconds, parse leniently (domain.md decision 8).

``now()`` is the single clock of the package. Tests and the demo move it with ``OMNI_ERP_CLOCK_OFFSET_S``
(seconds added to the real time) so time-based rules such as the 24-hour IRN window are tested without sleeping.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta, timezone

IST = timezone(timedelta(hours=5, minutes=30), "IST")

_DMY = re.compile(r"^(\d{2})-(\d{2})-(\d{4})T(\d{2}):(\d{2}):(\d{2})$")


def now() -> datetime:
    """Current UTC time, shifted by ``OMNI_ERP_CLOCK_OFFSET_S`` when set."""
    offset = float(os.environ.get("OMNI_ERP_CLOCK_OFFSET_S") or 0)
    return datetime.now(UTC) + timedelta(seconds=offset)


def parse_datetime(value: str | datetime | None) -> datetime | None:
    """Parse Increff's timestamps leniently and return an aware UTC datetime.

    Accepts ISO-8601 with or without offset (no offset means IST, Increff's zone), with ``Z``,
    and the occasional ``dd-MM-yyyyTHH:mm:ss``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip()
        match = _DMY.match(text)
        if match:
            d, m, y, hh, mm, ss = (int(g) for g in match.groups())
            dt = datetime(y, m, d, hh, mm, ss)
        else:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not a date-time: {text[:40]!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=IST)
    return dt.astimezone(UTC)


def to_omni(dt: datetime) -> str:
    """Format as Omni expects: ``2026-11-20T11:00:00.000+05:30``."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ist = dt.astimezone(IST)
    return ist.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ist.microsecond // 1000:03d}+05:30"


def financial_year(dt: datetime) -> str:
    """Indian financial year (April-March) of a date, as ``2026-27``."""
    ist = dt.astimezone(IST) if dt.tzinfo else dt
    start = ist.year if ist.month >= 4 else ist.year - 1
    return f"{start}-{(start + 1) % 100:02d}"
