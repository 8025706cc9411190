"""WAHA's REST API as the simulator answers it: shapes, status codes, X-Api-Key, 422 while the
session is not WORKING, and API faults."""

from __future__ import annotations

import asyncio
import re
import time

from tests.wsm.waha_sim.conftest import SimFactory

CHAT = "5511987650052@c.us"
OUT_ID = re.compile(r"^true_5511987650052@c\.us_3EB0[0-9A-F]{18}$")


async def test_send_text_answers_201_with_the_message_id_and_keeps_the_message(
    make_sim: SimFactory,
) -> None:
    async with make_sim() as sim:
        # A bare number is a @c.us chat, as WAHA's ensureSuffix makes it.
        response = await sim.client.post(
            "/api/sendText",
            json={"session": "default", "chatId": "5511987650052", "text": "Olá! 1) Agenda"},
        )
        assert response.status_code == 201
        answer = response.json()
        assert set(answer) == {"id", "_data"}
        assert OUT_ID.match(answer["id"]), answer["id"]

        chat = await sim.chat(CHAT)
        assert [(m["id"], m["direction"], m["text"]) for m in chat["messages"]] == [
            (answer["id"], "out", "Olá! 1) Agenda")
        ]
        again = await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "2"})
        assert again.json()["id"] != answer["id"]


async def test_send_text_rejects_a_bad_body_and_keeps_nothing(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        for body in ({"text": "sem chat"}, {"chatId": CHAT}, {"chatId": CHAT, "text": 5}):
            response = await sim.client.post("/api/sendText", json=body)
            assert response.status_code == 400, body
            assert response.json()["statusCode"] == 400
        broken = await sim.client.post("/api/sendText", content=b"{not json")
        assert broken.status_code == 400
        assert await sim.control("GET", "/chats") == []


async def test_unknown_session_is_404_and_keeps_nothing(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        response = await sim.client.post(
            "/api/sendText", json={"session": "other", "chatId": CHAT, "text": "oi"}
        )
        assert response.status_code == 404
        assert response.json()["error"] == "Not Found"
        assert (await sim.client.get("/api/sessions/other")).status_code == 404
        assert await sim.control("GET", "/chats") == []


async def test_api_key_is_required_when_set(make_sim: SimFactory) -> None:
    async with make_sim(api_key="segredo") as sim:
        body = {"chatId": CHAT, "text": "oi"}
        missing = await sim.client.post("/api/sendText", json=body)
        wrong = await sim.client.post("/api/sendText", json=body, headers={"X-Api-Key": "x"})
        for response in (missing, wrong):
            assert response.status_code == 401
            assert response.json() == {"message": "Unauthorized", "statusCode": 401}
        assert (await sim.client.get("/api/sessions")).status_code == 401
        assert (await sim.client.get("/ping")).status_code == 401
        assert await sim.control("GET", "/chats") == []

        ok = await sim.client.post("/api/sendText", json=body, headers={"X-Api-Key": "segredo"})
        assert ok.status_code == 201
        # WAHA also takes the key from the query string.
        by_query = await sim.client.get("/api/sessions", params={"x-api-key": "segredo"})
        assert by_query.status_code == 200


async def test_no_api_key_configured_means_no_check(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        assert (await sim.client.get("/ping")).json() == {"message": "pong"}


async def test_422_while_the_session_is_not_working_then_recovery(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        await sim.set_status("FAILED")
        body = {"session": "default", "chatId": CHAT, "text": "oi"}
        for path in ("/api/sendText", "/api/sendSeen", "/api/startTyping", "/api/stopTyping"):
            response = await sim.client.post(path, json=body)
            assert response.status_code == 422, path
            assert response.json() == {
                "error": "Session status is not as expected. Try again later or restart the "
                "session",
                "session": "default",
                "status": "FAILED",
                "expected": ["WORKING"],
            }
        assert await sim.control("GET", "/chats") == []

        await sim.set_status("WORKING")
        assert (await sim.client.post("/api/sendText", json=body)).status_code == 201


async def test_a_call_waits_for_the_session_to_become_working(make_sim: SimFactory) -> None:
    # WAHA polls the status for up to 5 s before answering 422.
    async with make_sim(session_wait=5.0) as sim:
        await sim.set_status("STARTING")
        call = asyncio.create_task(
            sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "oi"})
        )
        await asyncio.sleep(0.1)
        assert not call.done()
        await sim.set_status("WORKING")
        assert (await call).status_code == 201


async def test_send_seen_and_typing(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        first = await sim.inbound(chat=CHAT, text="oi")
        second = await sim.inbound(chat=CHAT, text="tudo bem?")

        with_id = await sim.client.post(
            "/api/sendSeen", json={"chatId": CHAT, "messageId": first["message_id"]}
        )
        assert with_id.status_code == 201
        assert with_id.content == b""
        # Without a message id WAHA reads the chat's unread messages and lists them.
        without = await sim.client.post("/api/sendSeen", json={"chatId": CHAT})
        assert without.status_code == 201
        assert without.json() == {"ids": [second["message_id"]]}
        assert all(m["read"] for m in (await sim.chat(CHAT))["messages"])

        start = await sim.client.post("/api/startTyping", json={"chatId": CHAT})
        assert (start.status_code, start.json()) == (201, {"result": True})
        assert (await sim.chat(CHAT))["typing"] is True
        stop = await sim.client.post("/api/stopTyping", json={"chatId": CHAT})
        assert (stop.status_code, stop.json()) == (201, {"result": True})
        assert (await sim.chat(CHAT))["typing"] is False

        await sim.client.post("/api/startTyping", json={"chatId": CHAT})
        await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "pronto"})
        assert (await sim.chat(CHAT))["typing"] is False


async def test_sessions_shapes(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        listed = (await sim.client.get("/api/sessions")).json()
        assert [s["name"] for s in listed] == ["default"]
        entry = listed[0]
        assert set(entry) == {"name", "status", "config", "me", "presence", "timestamps"}
        assert entry["status"] == "WORKING"
        assert set(entry["me"]) == {"id", "pushName", "lid", "jid"}

        one = (await sim.client.get("/api/sessions/default")).json()
        assert one["engine"]["engine"] == "GOWS"
        assert (await sim.client.get("/api/sessions/default/me")).json() == entry["me"]

        await sim.set_status("STOPPED")
        assert (await sim.client.get("/api/sessions")).json() == []
        stopped = (await sim.client.get("/api/sessions", params={"all": "true"})).json()
        assert stopped[0]["status"] == "STOPPED"
        assert stopped[0]["me"] is None

        started = await sim.client.post("/api/sessions/default/start")
        assert (started.status_code, started.json()["status"]) == (201, "STARTING")

        async def working() -> bool:
            info = (await sim.client.get("/api/sessions/default")).json()
            return bool(info["status"] == "WORKING")

        from tests.support.polling import async_wait_until

        await async_wait_until(working, what="session to be WORKING again")


async def test_lids(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        await sim.control("POST", "/lids", json={"lid": "123456789@lid", "phone": "5511912345678"})
        found = await sim.client.get("/api/default/lids/123456789@lid")
        assert (found.status_code, found.json()) == (
            200,
            {"lid": "123456789@lid", "pn": "5511912345678@c.us"},
        )
        # A bare lid gets its suffix, as in WAHA.
        assert (await sim.client.get("/api/default/lids/123456789")).json()["pn"] == (
            "5511912345678@c.us"
        )
        unknown = await sim.client.get("/api/default/lids/999@lid")
        assert unknown.json() == {"lid": "999@lid", "pn": None}
        invalid = await sim.client.get("/api/default/lids/5511912345678@c.us")
        assert invalid.status_code == 422
        assert invalid.json()["message"] == "Invalid LID - it must end with @lid"

        by_pn = await sim.client.get("/api/default/lids/pn/5511912345678@c.us")
        assert by_pn.json() == {"lid": "123456789@lid", "pn": "5511912345678@c.us"}
        assert (await sim.client.get("/api/default/lids/count")).json() == {"count": 1}
        assert (await sim.client.get("/api/default/lids")).json() == [
            {"lid": "123456789@lid", "pn": "5511912345678@c.us"}
        ]

        await sim.set_status("FAILED")
        assert (await sim.client.get("/api/default/lids/123456789@lid")).status_code == 422


async def test_long_poll_returns_when_the_bot_answers(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        sent = await sim.inbound(chat=CHAT, text="oi")
        first = await sim.chat(CHAT)
        after = first["last_seq"]
        assert first["messages"][0]["id"] == sent["message_id"]
        assert after == sent["seq"]

        poll = asyncio.create_task(
            sim.client.get(f"/_sim/chats/{CHAT}/messages", params={"after": after, "wait": 10})
        )
        await asyncio.sleep(0.05)
        assert not poll.done()
        await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "Olá!"})
        answer = (await poll).json()
        assert [m["text"] for m in answer["messages"]] == ["Olá!"]
        assert answer["messages"][0]["direction"] == "out"


async def test_api_faults_fail_next_calls_then_recover(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        await sim.control(
            "POST",
            "/faults",
            json={"fail_next": {"count": 2, "status": 503, "paths": ["sendText"]}},
        )
        body = {"chatId": CHAT, "text": "oi"}
        # Other routes are not affected.
        assert (await sim.client.post("/api/startTyping", json=body)).status_code == 201
        statuses = [(await sim.client.post("/api/sendText", json=body)).status_code for _ in "123"]
        assert statuses == [503, 503, 201]
        assert len((await sim.chat(CHAT))["messages"]) == 1

        await sim.control("POST", "/faults", json={"fail_next": {"status": 429, "retry_after": 2}})
        limited = await sim.client.post("/api/sendText", json=body)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "2"


async def test_api_latency_fault(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        await sim.control("POST", "/faults", json={"latency": {"ms": 200}})
        started = time.monotonic()
        assert (await sim.client.get("/api/sessions")).status_code == 200
        # A lower bound only: the delay cannot be shorter than asked.
        assert time.monotonic() - started >= 0.2
        await sim.control("DELETE", "/faults")
        assert (await sim.control("GET", "/faults"))["latency"] is None


async def test_bad_fault_requests_are_refused(make_sim: SimFactory) -> None:
    async with make_sim() as sim:
        bodies: list[dict[str, object]] = [
            {"fail_next": {"status": 404}},
            {"duplicate": {"mode": "sometimes"}},
            {"reorder": {"count": 1}},
            {"explode": {}},
        ]
        for body in bodies:
            response = await sim.client.post("/_sim/faults", json=body)
            assert response.status_code == 400, body
        assert await sim.control("GET", "/faults") == {
            "latency": None,
            "fail_next": None,
            "duplicate": None,
            "reorder": None,
        }


async def test_fast_path_and_fastapi_routes_answer_alike(make_sim: SimFactory) -> None:
    """The per-message routes are served as raw ASGI; the FastAPI routes that document them
    must give the same answers."""

    async def answers(fast: bool) -> list[tuple[int, object]]:
        async with make_sim(fast_path=fast) as sim:
            calls: list[tuple[str, object]] = [
                ("/_sim/inbound", {"chat": CHAT, "text": "oi", "message_id": "AB12"}),
                ("/_sim/inbound", {"text": "sem chat"}),
                ("/api/sendText", {"chatId": CHAT, "text": "Olá"}),
                ("/api/sendText", {"chatId": CHAT}),
                ("/api/sendText", [1, 2]),
                ("/api/sendText", {"session": "x", "chatId": CHAT, "text": "Olá"}),
                ("/api/sendSeen", {"chatId": CHAT, "messageId": f"false_{CHAT}_AB12"}),
                ("/api/sendSeen", {"chatId": CHAT}),
                ("/api/startTyping", {"chatId": CHAT}),
                ("/api/stopTyping", {"chatId": CHAT}),
            ]
            results = []
            for path, body in calls:
                response = await sim.client.post(path, json=body)
                document: object = response.json() if response.content else None
                if path == "/api/sendText" and isinstance(document, dict) and "id" in document:
                    document = sorted(document)  # the id is fresh each time
                results.append((response.status_code, document))
            await sim.set_status("FAILED")
            response = await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "x"})
            results.append((response.status_code, response.json()))
            return results

    fast, slow = await answers(True), await answers(False)
    assert fast == slow
    assert [status for status, _ in fast] == [200, 400, 201, 400, 400, 404, 201, 201, 201, 201, 422]
