"""The operator's endpoints, served by FastAPI: liveness, readiness and metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from gateway import metrics
from gateway.runtime import GatewayRuntime


def health_router(runtime: GatewayRuntime) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Response:
        """The process serves requests (says nothing about Redis: see /readyz)."""
        return _json(200, {"status": "alive"})

    @router.get("/readyz")
    async def readyz() -> Response:
        """200 when Redis answers PING within the webhook deadline, else 503; either way the
        body says whether this process's spool is in use and how many events it holds."""
        ready, document = await runtime.readiness()
        return _json(200 if ready else 503, document)

    @router.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router


def _json(status: int, document: dict[str, object]) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")
