"""contracts/erp_rest.yaml, models/erp.py and the ERP sandbox describe the same API."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import yaml
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from omni_erp.models import erp as models
from omni_erp.sandbox.erp import create_erp_sandbox

CONTRACT = yaml.safe_load((resources.files("omni_erp") / "contracts" / "erp_rest.yaml").read_text())
REGISTRY = Registry().with_resource("urn:erp-rest", Resource(CONTRACT, specification=DRAFT202012))
MODELS: list[type[BaseModel]] = [
    models.DocumentLine, models.SalesOrderRequest, models.SalesOrder, models.EInvoice, models.EInvoicePage,
    models.ReturnOrderRequest, models.ReturnOrder, models.ErpCreditNote, models.CreditNotePage,
]
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def conforms(schema_name: str, document: Any) -> list[str]:
    validator = Draft202012Validator({"$ref": f"urn:erp-rest#/components/schemas/{schema_name}"}, registry=REGISTRY)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_contract_is_openapi_3_1_with_bearer_auth() -> None:
    assert CONTRACT["openapi"].startswith("3.1")
    assert CONTRACT["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert CONTRACT["security"] == [{"bearerAuth": []}]


def test_sandbox_serves_exactly_the_operations_of_the_contract() -> None:
    documented = {
        (method.upper(), path) for path, item in CONTRACT["paths"].items() for method in item if method in HTTP_METHODS
    }
    served = {
        (method, route.path)
        for route in create_erp_sandbox().routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in route.methods
    }

    assert served == documented


@pytest.mark.parametrize("model", MODELS, ids=[m.__name__ for m in MODELS])
def test_schema_has_the_fields_of_the_model(model: type[BaseModel]) -> None:
    schema = CONTRACT["components"]["schemas"][model.__name__]
    fields = {field.alias or name: field for name, field in model.model_fields.items()}

    assert set(fields) <= set(schema["properties"])
    assert {alias for alias, field in fields.items() if field.is_required()} == set(schema.get("required", []))
    if model.model_config.get("extra") == "forbid":  # requests: nothing more may be sent
        assert set(fields) == set(schema["properties"]) and schema["additionalProperties"] is False


def test_every_post_requires_an_idempotency_key() -> None:
    for path, item in CONTRACT["paths"].items():
        if "post" in item:
            refs = [p.get("$ref") for p in item["post"]["parameters"]]
            assert "#/components/parameters/IdempotencyKey" in refs, path


def test_sandbox_answers_conform_to_the_contract(erp: Any) -> None:
    order = {
        "orderCode": "FN6018822001", "poNumber": "4042640641", "buyerCode": "AJIO-RRL",
        "lines": [{"lineCode": "FN6018822001-1", "sku": "460491724004", "quantity": 2, "unitPrice": 1120}],
        "totalAmount": 2240,
    }
    assert conforms("SalesOrderRequest", order) == []
    booked = erp.post("/api/v1/sales-orders", order, key="create:FN6018822001").json()
    [invoice] = erp.feed("/api/v1/e-invoices", at_least=1)
    ret = {
        "returnOrderCode": "RTN-1", "orderCode": "FN6018822001", "invoiceNumber": invoice["invoiceNumber"],
        "reason": "SIZE_MISMATCH", "lines": [{"sku": "460491724004", "quantity": 1, "unitPrice": 1120}],
    }
    returned = erp.post("/api/v1/return-orders", ret, key="return:RTN-1").json()
    erp.feed("/api/v1/credit-notes", at_least=1)
    error = erp.post("/api/v1/sales-orders", order, key="other-key").json()

    assert conforms("SalesOrder", booked) == []
    assert conforms("EInvoicePage", erp.get("/api/v1/e-invoices").json()) == []
    assert conforms("ReturnOrder", returned) == []
    assert conforms("CreditNotePage", erp.get("/api/v1/credit-notes").json()) == []
    assert conforms("Error", error) == []


def test_contract_schemas_catch_a_broken_document() -> None:
    assert conforms("SalesOrder", {"salesOrderId": "SO-000001", "orderCode": "FN1", "status": "SHIPPED"})
    assert conforms("EInvoice", {"seq": 1, "invoiceNumber": "rb/1"})
