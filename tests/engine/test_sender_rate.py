"""The per-session send rate limit, on (issue 18): more sends than the burst, from several
conversations of one session at once, are spaced as the token bucket says.

No wall-clock thresholds: each send's time is read from the Redis clock (the bucket's own clock)
when WAHA's stand-in receives it, and only lower bounds are asserted. A token bucket of `burst`
tokens refilled at `rate` per second grants its j-th send (1-based) no earlier than
(j - burst) / rate seconds after its first, so a send can be late (a busy machine) but never
early. With the limit off, all of them go out at once and the bounds fail."""

from __future__ import annotations

import httpx
import orjson
import respx

from shared.keys import WahaSessionKeys
from tests.engine.harness import WAHA, mock_courtesy
from tests.engine.support import commit_replies, make_sender

RATE = 4.0  # sends per second
BURST = 2
CHATS = [f"55119876500{n:02d}@c.us" for n in range(6)]
# The script works in whole milliseconds (and rounds its waits up): a little slack for that.
ROUNDING_MS = 2


async def redis_ms(aredis) -> int:
    seconds, micros = await aredis.time()
    return int(seconds * 1000 + micros // 1000)


@respx.mock
async def test_sends_beyond_the_burst_are_spaced_by_the_sessions_rate(aredis, key_prefix) -> None:
    mock_courtesy()
    sends: list[tuple[int, str]] = []  # (Redis clock ms, chat)

    async def send_text(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sends.append((await redis_ms(aredis), body["chatId"]))
        short = f"3EB0{len(sends):016X}"
        return httpx.Response(201, json={"id": f"true_{body['chatId']}_{short}", "fromMe": True})

    respx.post(f"{WAHA}/api/sendText").mock(side_effect=send_text)
    for chat in CHATS:
        await commit_replies(aredis, key_prefix, f"para {chat}", chat=chat)
    sender, waha = make_sender(aredis, key_prefix, sends_per_second=RATE, burst=BURST)
    start = await redis_ms(aredis)
    assert await sender.sweep_once() == len(CHATS)  # every conversation at once
    await sender.drain()
    assert sorted(chat for _, chat in sends) == sorted(CHATS)  # each one sent, once
    times = sorted(at for at, _ in sends)
    # Within the first 1/rate seconds only the burst went out ...
    assert sum(1 for at in times if at < start + 1000 / RATE - ROUNDING_MS) <= BURST
    # ... and every later send waited for its token.
    for j, at in enumerate(times, start=1):
        assert at >= start + (j - BURST) * 1000 / RATE - ROUNDING_MS, (j, at - start)
    assert await aredis.exists(WahaSessionKeys("default", key_prefix).rate) == 1
    await waha.aclose()
