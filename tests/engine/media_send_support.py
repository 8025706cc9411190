"""The agents' files test kit, shared by the engine's (tests/engine/test_media_send.py) and the
API's (tests/api/test_media_api.py): files' bytes, and WAHA's file routes stood in for by respx,
answering with WAHA's shapes (tests/fixtures/waha/api/)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import orjson
import respx

from tests.engine.harness import WAHA
from tests.support.waha import FIXTURES

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


PDF = b"%PDF-1.4\n" + b"x" * 64


def waha_answer(name: str) -> Any:
    return orjson.loads((FIXTURES / "api" / name).read_text("utf-8"))


class MediaWaha:
    """WAHA's file routes: 201 with the sent message, or WAHA Core's 422 when `core`."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.core = False
        self._ids = itertools.count(1)
        self.routes = {
            path: router.post(f"{WAHA}/api/{path}").mock(side_effect=self._send)
            for path in ("sendImage", "sendFile", "sendVoice")
        }

    def _send(self, request: httpx.Request) -> httpx.Response:
        if self.core:
            return httpx.Response(422, json=waha_answer("send-image-plus-required.json"))
        body = orjson.loads(request.content)
        answer = waha_answer("send-image-sent.json")
        answer["id"] = f"true_{body['chatId']}_3EB1{next(self._ids):016X}"
        return httpx.Response(201, json=answer)

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        return [
            orjson.loads(call.request.content)
            for name, route in self.routes.items()
            if path in (None, name)
            for call in route.calls
        ]
