"""Regression corpus: hand-written bad requests (``corpus/bad_requests.jsonl``), each refused in Increff's shape.

One case per line: ``name``, the expected ``status``, and the request: a raw ``body`` (or ``body_hex``), or a
``base`` sample (create, cancel, complete, return from ``tests/fixtures``) changed by ``set`` (dotted path ->
value; ``"__delete__"`` removes the field, ``"__nested_N__"`` puts N nested arrays there,
``"__copy_<path>__"`` copies another part of the posting) and ``delete``; ``pad_to`` pads the body to that
many bytes (``streamed`` sends it without Content-Length); ``content_type`` (null: no header) and
``api_key`` (null: no header) override what Omni normally sends.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omni_erp.ledger.tables import inbox_message
from tests.inbox.conftest import API_KEY, Inbox, sample

CORPUS = Path(__file__).resolve().parent / "corpus" / "bad_requests.jsonl"
CASES = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
BASES = {
    "create": "outward_order_create.json",
    "cancel": "outward_order_cancel.json",
    "complete": "outward_order_complete_partial.json",
    "return": "return_order_posting.json",
}
SEEDED = sample(BASES["create"])  # the corpus inbox holds this posting, so reusing its messageId is a conflict


def _steps(path: str) -> list[Any]:
    return [int(step) if step.isdigit() else step for step in path.split(".")]


def _get(document: Any, path: str) -> Any:
    for step in _steps(path):
        document = document[step]
    return document


def _resolve(value: Any, posting: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("__nested_"):
        nested: Any = 1
        for _ in range(int(value.removeprefix("__nested_").removesuffix("__"))):
            nested = [nested]
        return nested
    if isinstance(value, str) and value.startswith("__copy_"):
        return copy.deepcopy(_get(posting, value.removeprefix("__copy_").removesuffix("__")))
    return value


def _apply(posting: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = _steps(path)
    target: Any = posting
    for step in parents:
        target = target[step]
    if value == "__delete__":
        del target[last]
    elif isinstance(target, list) and last == len(target):
        target.append(value)
    else:
        target[last] = value


def build_body(case: dict[str, Any]) -> bytes:
    """The raw request body a corpus case describes."""
    if "body" in case:
        return case["body"].encode("utf-8", errors="surrogatepass")
    if "body_hex" in case:
        return bytes.fromhex(case["body_hex"])
    posting = sample(BASES[case["base"]])
    for path, value in case.get("set", {}).items():
        _apply(posting, path, _resolve(value, posting))
    for path in case.get("delete", []):
        _apply(posting, path, "__delete__")
    body = json.dumps(posting)
    if "pad_to" in case:
        posting["padding"] = ""
        posting["padding"] = "x" * (case["pad_to"] - len(json.dumps(posting)))
        body = json.dumps(posting)
        assert len(body) == case["pad_to"]
    return body.encode()


def send(inbox: Inbox, case: dict[str, Any]):
    headers = {}
    content_type = case.get("content_type", "application/json")
    if content_type is not None:
        headers["Content-Type"] = content_type
    key = case.get("api_key", API_KEY)
    if key is not None:
        headers["X-Api-Key"] = key
    body = build_body(case)
    content: bytes | Iterator[bytes] = iter([body]) if case.get("streamed") else body
    return inbox.client.post("/postings", content=content, headers=headers)


@pytest.fixture(scope="module")
def corpus_inbox(tmp_path_factory) -> Inbox:
    from omni_erp.ledger.engine import sqlite_url

    inbox = Inbox(sqlite_url(tmp_path_factory.mktemp("corpus") / "ledger.sqlite"))
    assert inbox.post(SEEDED).status_code == 200
    return inbox


def _stored(inbox: Inbox) -> list[tuple[str, str]]:
    with inbox.ledger.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(inbox_message.c.message_id, inbox_message.c.content_hash))]


def test_corpus_has_at_least_300_distinct_cases():
    assert len(CASES) >= 300
    assert len({case["name"] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_bad_request_is_refused_in_increff_shape_and_nothing_is_stored(corpus_inbox, case):
    before = _stored(corpus_inbox)

    response = send(corpus_inbox, case)

    assert response.status_code == case["status"], response.text
    body = response.json()
    assert set(body) == {"hasError", "errorMessage"} and body["hasError"] is True and body["errorMessage"]
    assert _stored(corpus_inbox) == before
