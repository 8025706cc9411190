"""The engine's calls to WAHA: CPU per call of the client as the workers build it, against the
same client and transport with httpx's request and response objects around each call.

    python3 bench/waha_client_bench.py [--calls 8000] [--concurrency 16] [--rounds 4]

A stand-in WAHA in another process (uvloop, one fixed `201` answer shaped like sendText's)
answers every request at once, so what is measured is the client's own CPU
(`time.process_time` of this process) per `send_text`, with `--concurrency` calls in flight.
Both sides use one `LeanHTTPTransport`: the client as `engine/parts.py` builds it writes each
request out as bytes (`shared/lean_http.Origin`); the baseline hands the same transport to the
client behind a plain `httpx.AsyncBaseTransport`, so each call builds an `httpx.Request` and an
`httpx.Response`, as every call did before the seventeenth session. Rounds alternate the two.
Results: docs/benchmarks.md ("End to end", seventeenth session).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.waha_client import WahaClient  # noqa: E402
from shared.embedded_redis import free_port  # noqa: E402
from shared.lean_http import LeanHTTPTransport  # noqa: E402

CHAT = "5511987650001@c.us"
_ID = b'{"id":"true_5511987650001@c.us_3EB0C767D26A1D0A5C4E","fromMe":true}'
ANSWER = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_ID), _ID)
)


def serve(port: int) -> None:
    """Answers each request (the client sends no pipelined or split heads it cares about)."""

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            for _ in range(data.count(b" HTTP/1.1\r\n")):
                self.transport.write(ANSWER)

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


class ThroughHttpxObjects(httpx.AsyncBaseTransport):
    """The same lean transport, reached through httpx's request and response objects."""

    def __init__(self, inner: LeanHTTPTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def cpu_per_call_us(port: int, *, raw: bool, calls: int, concurrency: int) -> float:
    lean = LeanHTTPTransport()
    transport: httpx.AsyncBaseTransport = lean if raw else ThroughHttpxObjects(lean)
    client = WahaClient(f"http://127.0.0.1:{port}", api_key="k", transport=transport)

    async def send(n: int) -> None:
        for _ in range(n):
            await client.send_text("default", CHAT, "Olá! Como posso ajudar? Digite 1, 2 ou 3.")

    await send(200)  # connections open, code paths warm
    started = time.process_time()
    await asyncio.gather(*(send(calls // concurrency) for _ in range(concurrency)))
    spent = time.process_time() - started
    await client.aclose()
    return spent / (calls // concurrency * concurrency) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    server = multiprocessing.Process(target=serve, args=(port,), daemon=True)
    server.start()
    time.sleep(0.5)
    figures: dict[str, list[float]] = {"httpx objects": [], "raw": []}
    try:
        for round_no in range(1, args.rounds + 1):
            for name, raw in (("httpx objects", False), ("raw", True)):
                us = uvloop.run(
                    cpu_per_call_us(port, raw=raw, calls=args.calls, concurrency=args.concurrency)
                )
                figures[name].append(us)
                print(f"round {round_no}: {name:>13}: {us:6.1f} us of CPU per call", flush=True)
    finally:
        server.terminate()
    base, lean = (statistics.median(figures[k]) for k in ("httpx objects", "raw"))
    pairs = zip(figures["raw"], figures["httpx objects"], strict=True)
    ratios = ", ".join(f"{r / b:.2f}" for r, b in pairs)
    print(f"median: httpx objects {base:.1f} us, raw {lean:.1f} us per call")
    print(f"raw / httpx objects: {lean / base:.2f} (per round: {ratios})")


if __name__ == "__main__":
    main()
