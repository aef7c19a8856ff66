"""Find configured secrets in collected text (logs, ledger rows, XComs), also base64- or URL-encoded.

Used by the life-cycle secret scan (tests/dags/test_secret_scan.py). Collectors return
``{source name: text}`` so a finding names where the secret leaked; ``find_secrets`` returns the
findings, never the secret itself, so a failing test does not print it either.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _base64_fragments(secret: bytes) -> set[str]:
    """Substrings that appear in the base64 of any text containing ``secret``, at each of the 3 alignments.

    Base64 maps 3 bytes to 4 characters, so how ``secret`` encodes depends on its offset modulo 3 in the
    surrounding text (e.g. a password after ``user:`` in a Basic auth header). For each offset, encode
    the secret behind that many filler bytes and keep only the characters made of secret bytes alone.
    """
    fragments = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode()
        start = (0, 2, 3)[shift]  # characters that mix in filler bits
        end = (shift + len(secret)) // 3 * 4  # the last, partial group depends on what follows
        fragment = encoded[start:end]
        fragments |= {fragment, fragment.replace("+", "-").replace("/", "_")}  # standard and URL-safe alphabets
    return fragments


def secret_variants(secret: str) -> dict[str, str]:
    """Every form of ``secret`` the scan looks for: ``{form name: text}`` (the text is the secret, encoded)."""
    raw = secret.encode()
    variants = {
        "plain": secret,
        "url-encoded": urllib.parse.quote(secret, safe=""),
        "form-encoded": urllib.parse.quote_plus(secret),
        "url-encoded twice": urllib.parse.quote(urllib.parse.quote(secret, safe=""), safe=""),
    }
    for n, fragment in enumerate(sorted(_base64_fragments(raw))):
        variants[f"base64 #{n}"] = fragment
    return variants


def find_secrets(texts: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """``"<secret name> (<form>) in <source>"`` for every secret form found in any text; empty when clean.

    :param texts: ``{source name: collected text}``.
    :param secrets: ``{secret name: secret}``; the secret values never appear in the result.
    """
    findings = []
    for secret_name, secret in secrets.items():
        for form, needle in secret_variants(secret).items():
            findings += [f"{secret_name} ({form}) in {source}" for source, text in texts.items() if needle in text]
    return findings


# --- collectors ------------------------------------------------------------------------------


def log_files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (task log files), read as text."""
    return {
        f"log file {path.relative_to(root)}": path.read_text(errors="replace")
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def database_rows(url: str, *, skip_tables: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the database at ``url`` (all columns), as ``{table: rows}``."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        skipped = set(skip_tables)
        with engine.connect() as conn:
            return {
                name: [dict(row._mapping) for row in conn.execute(sa.select(table))]
                for name, table in metadata.tables.items()
                if name not in skipped
            }
    finally:
        engine.dispose()


def as_text(value: Any) -> str:
    """Text of a row or value for scanning, strings unescaped (bytes decoded, containers flattened)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode(errors="replace")
    if isinstance(value, Mapping):
        return "\n".join(f"{as_text(k)}={as_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return "\n".join(as_text(v) for v in value)
    return str(value)
