"""Pydantic models of the documents exchanged with Omni and the ERP (no I/O, no business rules)."""
