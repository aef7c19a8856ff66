"""Exceptions raised by omni_erp.

    OmniErpError
    ├── RemoteError                 an external system (Omni, ERP) answered badly or not at all
    │   ├── RemoteUnavailableError  timeout, connection error, 429, 5xx: retrying may help
    │   └── RemoteRejectedError     other 4xx: the data or credentials must be fixed by a person
    ├── PayloadError                a posting or document failed our validation
    └── LedgerConflictError         the ledger already holds something different under the same key
"""

from __future__ import annotations


class OmniErpError(Exception):
    """Base class of every error this package raises on purpose."""


class RemoteError(OmniErpError):
    """A call to an external system failed.

    :param system: "omni" or "erp".
    :param status: HTTP status code, or None when no response arrived.
    :param message: the server's message (Increff's ``code/message/description`` joined), never secrets.
    """

    def __init__(self, system: str, status: int | None, message: str, *, code: str | None = None) -> None:
        self.system = system
        self.status = status
        self.code = code
        self.message = message
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{system} {where}: {message}")


class RemoteUnavailableError(RemoteError):
    """Timeout, connection error, 429 or 5xx: the same request may succeed later."""


class RemoteRejectedError(RemoteError):
    """A 4xx other than 429: retrying the same request will not help."""


class PayloadError(OmniErpError, ValueError):
    """A posting or document is not usable; the message says why in plain words."""


class LedgerConflictError(OmniErpError):
    """The same natural key was recorded before with different content."""
