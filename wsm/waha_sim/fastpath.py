"""The routes a load test hits on every message, served as raw ASGI.

Each customer message costs the simulator five calls (the customer's inbound, then the
bot's sendSeen, startTyping, stopTyping, sendText); FastAPI's routing, request object and
response class cost more than the simulator's own work for each. These routes skip them and
call the same Simulator methods as the FastAPI routes in waha_api/control_api (which still
document them in /docs and serve them when the fast path is off).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Send

from wsm.waha_sim.errors import BadRequest, ControlError, SimError
from wsm.waha_sim.simulator import Simulator

Handler = Callable[[Simulator, dict[str, Any]], Awaitable[Any]]


async def _typing_on(sim: Simulator, body: dict[str, Any]) -> Any:
    return await sim.typing(body, True)


async def _typing_off(sim: Simulator, body: dict[str, Any]) -> Any:
    return await sim.typing(body, False)


async def _send_text(sim: Simulator, body: dict[str, Any]) -> Any:
    return await sim.send_text(body)


async def _send_seen(sim: Simulator, body: dict[str, Any]) -> Any:
    return await sim.send_seen(body)


async def _inbound(sim: Simulator, body: dict[str, Any]) -> Any:
    return await sim.customer_writes(body)


# path -> (handler, success status, is a control route)
ROUTES: dict[str, tuple[Handler, int, bool]] = {
    "/api/sendText": (_send_text, 201, False),
    "/api/sendSeen": (_send_seen, 201, False),
    "/api/startTyping": (_typing_on, 201, False),
    "/api/stopTyping": (_typing_off, 201, False),
    "/_sim/inbound": (_inbound, 200, True),
}


async def read_body(receive: Receive) -> bytes:
    """An ASGI request's whole body, however many chunks it came in."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, document: Any) -> None:
    if document is None:  # NestJS: a POST handler returning nothing -> 201, empty body
        raw, headers = b"", [(b"content-length", b"0")]
    else:
        raw = orjson.dumps(document)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def serve(
    simulator: Simulator, route: tuple[Handler, int, bool], receive: Receive, send: Send
) -> None:
    handler, status, control = route
    raw = await read_body(receive)
    try:
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise (
                ControlError(f"invalid JSON: {exc}") if control else BadRequest(str(exc))
            ) from None
        if not isinstance(body, dict):
            message = "body must be a JSON object"
            raise ControlError(message) if control else BadRequest(message)
        result = await handler(simulator, body)
    except SimError as exc:
        await _respond(send, exc.status, exc.body())
        return
    await _respond(send, status, result)
