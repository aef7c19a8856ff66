"""Local stand-ins for the seller's ERP and Increff Omni, plus a posting pusher, for tests and the demo."""

from __future__ import annotations
