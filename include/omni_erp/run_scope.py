"""What one run works on, from its trigger form and its run type: ``RunScope`` (pure, no Airflow, no I/O).

- Every run by default: everything due (pending postings, documents not uploaded yet).
- ``order_codes`` (trigger form): only these orders - and their dead-lettered postings and rejected uploads
  too, replayed from the raw posting the inbox kept, once the cause is fixed.
- A backfill run (``airflow backfill create``): only the work received (postings) or recorded (ERP documents)
  inside the run's data interval; completed items are skipped, deferred, failed and dead-lettered ones retried.
- ``dry_run`` (trigger form): compute and log exactly what would be sent; send nothing, change nothing.

The DAGs hand the three values to every operator through ``dag_conventions.default_args`` (templated).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_ORDER_CODES = 1000
MAX_ORDER_CODE_LENGTH = 255  # inbox_message.order_code


@dataclass(frozen=True)
class RunScope:
    """One run's selection and mode.

    :param dry_run: log what would be sent and written; send nothing, write nothing.
    :param order_codes: only these orders (empty: no restriction), in the order given, without repeats.
    :param window: ``(start, end)``, timezone-aware: only work received or recorded at ``start <= t < end``
        (a backfill run's data interval); None: no restriction.
    """

    dry_run: bool = False
    order_codes: tuple[str, ...] = ()
    window: tuple[datetime, datetime] | None = None

    @classmethod
    def parse(cls, *, dry_run: Any = False, order_codes: Any = None, window: Any = None) -> RunScope:
        """The scope from templated operator arguments (strings after rendering) or native values.

        :raises ValueError: with a message saying which value is wrong and why.
        """
        return cls(dry_run=parse_flag(dry_run), order_codes=parse_order_codes(order_codes), window=parse_window(window))

    @property
    def selective(self) -> bool:
        """True when the run works on a part of what is due (some orders, or a window)."""
        return bool(self.order_codes) or self.window is not None

    def covers_order(self, order_code: str | None) -> bool:
        """True when ``order_code`` is in scope (always, without ``order_codes``)."""
        return not self.order_codes or order_code in self.order_codes

    def covers_time(self, at: datetime | None) -> bool:
        """True when ``at`` is inside the window (always, without one; never for an unknown time with one)."""
        if self.window is None:
            return True
        return at is not None and self.window[0] <= at < self.window[1]

    def describe(self) -> str:
        """One line for task logs: ``dry run; orders FN1, FN2; window 2026-12-01T10:00:00+00:00 to ...``."""
        parts = ["dry run: nothing is sent or written"] if self.dry_run else []
        if self.order_codes:
            shown = ", ".join(self.order_codes[:10])
            more = f" and {len(self.order_codes) - 10} more" if len(self.order_codes) > 10 else ""
            parts.append(f"only orders {shown}{more}")
        if self.window is not None:
            parts.append(f"only work received from {self.window[0].isoformat()} to before {self.window[1].isoformat()}")
        return "; ".join(parts) or "everything due"


def parse_flag(value: Any) -> bool:
    """A boolean from a native bool or its rendered text (``True``/``false``/``1``/``0``/``''``).

    :raises ValueError: anything else.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "", "none"):
        return False
    raise ValueError(f"dry_run must be true or false, got {value!r}")


def parse_order_codes(value: Any) -> tuple[str, ...]:
    """Order codes from a list, a JSON list (the rendered template) or text with one code per line or comma.

    Each code is stripped; blanks are dropped, repeats kept once, in the order given.

    :raises ValueError: a code that is too long or has control characters, or more than ``MAX_ORDER_CODES``.
    """
    if value is None:
        return ()
    items: Iterable[Any]
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"order_codes is not a valid JSON list: {exc}") from None
            if not isinstance(items, list):
                raise ValueError("order_codes must be a list of order codes")
        else:
            items = text.replace(",", "\n").splitlines()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"order_codes must be a list of order codes, got {type(value).__name__}")
    codes: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"order_codes must hold text, got {item!r}")
        code = item.strip()
        if not code:
            continue
        if len(code) > MAX_ORDER_CODE_LENGTH:
            raise ValueError(f"order code {code[:40]!r}... is longer than {MAX_ORDER_CODE_LENGTH} characters")
        if not code.isprintable():
            raise ValueError(f"order code {code!r} has control or invisible characters")
        codes[code] = None
    if len(codes) > MAX_ORDER_CODES:
        raise ValueError(f"at most {MAX_ORDER_CODES} order codes per run, got {len(codes)}")
    return tuple(codes)


def parse_window(value: Any) -> tuple[datetime, datetime] | None:
    """A ``(start, end)`` pair from ``"<start>/<end>"`` (ISO 8601, the rendered template), a pair, or nothing.

    :raises ValueError: unparsable, without a timezone, or start not before end.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = value.strip().split("/")
        if len(parts) != 2:
            raise ValueError(f"window must be '<start>/<end>' in ISO 8601, got {value!r}")
        try:
            start, end = (datetime.fromisoformat(p.strip()) for p in parts)
        except ValueError:
            raise ValueError(f"window must be '<start>/<end>' in ISO 8601, got {value!r}") from None
    else:
        start, end = value
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"window times need a timezone, got {value!r}")
    if not start < end:
        raise ValueError(f"window start must be before its end, got {value!r}")
    return start, end
