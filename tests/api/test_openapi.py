"""The operator API documents itself: /openapi.json is a valid OpenAPI document that lists every
route the app serves (with its methods), and /docs is the page that shows it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def documented_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves and means to document, found by walking
    its routing tree (not by reading /openapi.json, which is what is checked)."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str, documented: bool) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                if documented and route.include_in_schema:
                    found.update((m.lower(), prefix + route.path) for m in route.methods or ())
            elif hasattr(route, "original_router"):
                # FastAPI >= 0.16x keeps an included router as one lazy node.
                context = route.include_context
                walk(
                    route.original_router.routes,
                    prefix + context.prefix,
                    documented and context.include_in_schema,
                )
            elif hasattr(route, "routes") and hasattr(route, "path"):  # a Mount
                walk(route.routes, prefix + route.path, documented)

    walk(app.routes, "", True)
    return found


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs_in(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs_in(value)]
    return []


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_openapi_lists_every_route(api_app: FastAPI, api_client: httpx.AsyncClient) -> None:
    document = await openapi(api_client)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "wsm operator API"
    listed = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    routes = documented_routes(api_app)
    assert len(routes) >= 13  # the conversations, the line, agents, erasure, sessions
    assert listed == routes
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation.get("responses"), (method, path)
    # Every reference points at a schema the document carries.
    schemas = document.get("components", {}).get("schemas", {})
    for ref in refs_in(document):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref
    # The command routes take the idempotency key as the header it is, not a query parameter.
    post = document["paths"]["/api/conversations/{session}/{chat_id}/messages"]["post"]
    keys = [p for p in post["parameters"] if p["name"].lower() == "idempotency-key"]
    assert [p["in"] for p in keys] == ["header"]
    assert not [p for p in post["parameters"] if p["name"] == "idempotency_key"]


async def test_openapi_document_passes_the_openapi_validator(
    api_client: httpx.AsyncClient,
) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(await openapi(api_client))


async def test_docs_page_loads_the_document(api_client: httpx.AsyncClient) -> None:
    page = await api_client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in page.text and "'/openapi.json'" in page.text
    # What the page fetches next answers too (it was a 500, so /docs showed no API).
    assert (await api_client.get("/openapi.json")).status_code == 200
