"""The simulator's webhooks against real WAHA bodies (tests/fixtures/waha/), key for key at
every level, sent compact and signed as WAHA signs them.

Values are the simulator's own; keys are WAHA's. The envelope of every event has the key set
of message-text.json (a WAHA 2025.11 GOWS capture), which holds every envelope key of the
older captures (message-ack.json has no `timestamp`, session-status.json no `id`,
`timestamp` or `metadata`: current WAHA's populateSessionInfo sends all of them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from tests.support.waha import load_fixture
from tests.wsm.waha_sim.conftest import HMAC_KEY, Receiver, SimFactory
from tests.wsm.waha_sim.support import assert_fixture_keys_present, assert_same_keys
from wsm.waha_sim.webhooks import sign

CHAT = "5511987650052@c.us"
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


ENVELOPE = load_fixture("message-text.json")


# Session metadata is the user's own map; configured like the fixtures' so its keys compare.
METADATA = {"user.id": "123", "user.email": "email@example.com"}


def _envelope_only(document: dict[str, Any]) -> dict[str, Any]:
    # `environment` changed between WAHA versions (2023: tier; 2025.10: tier, browser;
    # 2025.11: version and engine only); it is compared with the newest capture below.
    return {k: v for k, v in document.items() if k not in ("payload", "environment")}


def assert_envelope(body: dict[str, Any], fixture: dict[str, Any]) -> None:
    # Every key WAHA sent in that capture is there...
    assert_fixture_keys_present(_envelope_only(body), _envelope_only(fixture))
    # ...and the envelope is exactly the current WAHA's, in its order.
    assert list(body) == list(ENVELOPE)
    assert list(body["me"]) == list(ENVELOPE["me"])
    assert list(body["environment"]) == list(ENVELOPE["environment"])
    assert body["id"].startswith("evt_") and ULID.match(body["id"][4:].upper())
    assert isinstance(body["timestamp"], int) and body["timestamp"] > 10**12  # ms


def assert_waha_request(request: Any) -> None:
    """Compact bytes, signed with the HMAC test vector's method, WAHA's headers."""
    body = request.body
    # JSON.stringify's output, by an independent serialiser: no spaces, raw UTF-8, same order.
    assert body == json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()
    expected = hmac.new(HMAC_KEY.encode(), body, hashlib.sha512).hexdigest()
    assert request.headers["x-webhook-hmac"] == expected
    assert request.headers["x-webhook-hmac-algorithm"] == "sha512"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("WAHA/")
    assert ULID.match(request.headers["x-webhook-request-id"])
    envelope = request.json
    assert request.headers["x-webhook-timestamp"] == str(envelope["timestamp"])
    # The envelope id and the request id are ULIDs of the same millisecond.
    assert envelope["id"][4:14].upper() == request.headers["x-webhook-request-id"][:10]


def test_signing_follows_wahas_documented_test_vector() -> None:
    vector = load_fixture("hmac-test-vector.json")
    body = vector["raw_body"].encode()
    assert sign(body, vector["key"]) == vector["X-Webhook-Hmac"]


async def test_message_matches_message_text_fixture(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,), metadata=METADATA) as sim:
        sent = await sim.inbound(chat=CHAT, text="Olá, quero marcar às 15h ✓")
        (request,) = await receiver.wait_for("message")
        assert_waha_request(request)
        body = request.json
        fixture = load_fixture("message-text.json")
        assert_envelope(body, fixture)
        assert_same_keys(body["payload"], fixture["payload"], ordered=True)
        payload = body["payload"]
        assert payload["id"] == sent["message_id"]
        assert re.match(r"^false_5511987650052@c\.us_[0-9A-F]{32}$", payload["id"])
        assert (payload["from"], payload["fromMe"], payload["source"]) == (CHAT, False, "app")
        assert payload["body"] == "Olá, quero marcar às 15h ✓"
        # Raw UTF-8, not \u escapes.
        assert "Olá".encode() in request.body
        assert (payload["ack"], payload["ackName"]) == (2, "DEVICE")
        assert isinstance(payload["timestamp"], int) and payload["timestamp"] < 10**11  # s


async def test_echo_of_our_send_matches_message_any_fromme_fixture(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,), metadata=METADATA) as sim:
        response = await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "Menu"})
        sent_id = response.json()["id"]
        (request,) = await receiver.wait_for("message.any")
        assert_waha_request(request)
        body = request.json
        fixture = load_fixture("message-any-fromme.json")
        assert_envelope(body, fixture)
        # Every key of the (WEBJS) capture, and exactly GOWS' message keys.
        assert_fixture_keys_present(body["payload"], fixture["payload"])
        assert_same_keys(body["payload"], ENVELOPE["payload"], ordered=True)
        payload = body["payload"]
        assert (payload["id"], payload["fromMe"], payload["source"]) == (sent_id, True, "api")
        assert (payload["ack"], payload["ackName"], payload["body"]) == (1, "SERVER", "Menu")
        # `message` carries only other people's messages.
        assert receiver.of("message") == []


async def test_acks_match_message_ack_fixture(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,), metadata=METADATA) as sim:
        response = await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "Menu"})
        sent_id = response.json()["id"]
        acks = await receiver.wait_for("message.ack", 2)
        fixture = load_fixture("message-ack.json")
        for request in acks:
            assert_waha_request(request)
            assert_envelope(request.json, fixture)
            assert_same_keys(request.json["payload"], fixture["payload"], ordered=True)
        levels = sorted((r.json["payload"]["ack"], r.json["payload"]["ackName"]) for r in acks)
        assert levels == [(2, "DEVICE"), (3, "READ")]
        for request in acks:
            payload = request.json["payload"]
            assert (payload["id"], payload["from"], payload["fromMe"]) == (sent_id, CHAT, True)
            assert payload["_data"]["MessageIDs"] == [sent_id.split("_")[2]]
            assert payload["_data"]["Chat"] == "5511987650052@s.whatsapp.net"
        chat = await sim.chat(CHAT)
        assert chat["messages"][0]["ackName"] == "READ"


async def test_session_status_matches_session_status_fixture(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,), metadata=METADATA) as sim:
        await sim.set_status("FAILED")
        await sim.set_status("STARTING")
        await sim.set_status("WORKING")
        requests = await receiver.wait_for("session.status", 3)
        fixture = load_fixture("session-status.json")
        working = requests[-1]
        assert_waha_request(working)
        assert_envelope(working.json, fixture)
        assert_same_keys(working.json["payload"], fixture["payload"], ordered=True)
        payload = working.json["payload"]
        assert payload["status"] == "WORKING"
        assert [s["status"] for s in payload["statuses"]] == ["FAILED", "STARTING", "WORKING"]
        assert payload["data"] is None


async def test_announces_the_session_at_start(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,), announce=True):
        requests = await receiver.wait_for("session.status", 2)
        assert [r.json["payload"]["status"] for r in requests] == ["STARTING", "WORKING"]
        assert requests[0].json["me"] is None
        assert requests[1].json["me"]["id"].endswith("@c.us")
