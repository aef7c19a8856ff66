"""Custom operators: one unit of work each, templated, with a compact XCom summary (ids and counts, never payloads)."""
