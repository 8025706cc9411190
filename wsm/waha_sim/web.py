"""HTTP helpers shared by the WAHA API and the control API."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from wsm.waha_sim.errors import BadRequest, ControlError, SimError
from wsm.waha_sim.simulator import Simulator


class JSON(Response):
    """orjson keeps the simulator's own cost low under a load test."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def sim_of(request: Request) -> Simulator:
    simulator: Simulator = request.app.state.sim
    return simulator


async def json_object(request: Request, *, control: bool = False) -> dict[str, Any]:
    """The request's JSON object body; an empty body counts as `{}`."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise (ControlError(f"invalid JSON: {exc}") if control else BadRequest(str(exc))) from None
    if not isinstance(value, dict):
        message = "body must be a JSON object"
        raise ControlError(message) if control else BadRequest(message)
    return value


def error_response(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SimError)
    return JSON(exc.body(), status_code=exc.status)
