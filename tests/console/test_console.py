"""The console in headless Chromium against the real product (see conftest.py), and the
refusals: a wrong password, a missing CSRF token, an agent acting on someone else's
conversation, each refused with nothing changed."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest
import redis

from shared.keys import ConsoleKeys, LineKeys, engine_keys_for
from tests.console.conftest import PASSWORD, Product, login, new_phone, shot
from tests.console.support import expect, http_login, login_csrf, page_csrf, snapshot
from tests.support.polling import wait_until
from tests.support.tools import require_program
from wsm.load.product import KEY_PREFIX

pytestmark = pytest.mark.slow

CONSOLE = ConsoleKeys(KEY_PREFIX)


def session_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{CONSOLE.tag}:sess:*"))


def agent_online(product: Product, agent_id: str) -> bool:
    raw = product.redis.hget(LineKeys(KEY_PREFIX).agents, agent_id)
    return bool(raw and orjson.loads(raw)["online"])


def test_an_agent_takes_a_customer_answers_and_closes(product: Product, page: Any) -> None:
    phone = new_phone()
    login(page, product.url, "ana")
    toggle = page.get_by_test_id("presence-toggle")
    expect(toggle).to_have_attribute("data-online", "false")
    toggle.click()
    expect(page.get_by_test_id("presence-toggle")).to_have_attribute("data-online", "true")
    # A mark on the page: if anything below reloaded the page, it would be gone.
    page.evaluate("window.__stayed = true")

    product.bring_to_line(phone)
    entry = page.get_by_test_id("line").get_by_test_id("line-entry").filter(has_text=phone)
    expect(entry).to_be_visible()  # it came over the live channel, without a reload
    assert page.evaluate("window.__stayed") is True
    shot(page, "line")

    page.get_by_test_id("take-next").click()
    conversation = page.get_by_test_id("conversation")
    expect(conversation).to_be_visible()
    assert phone in page.url
    expect(conversation.get_by_test_id("message").filter(has_text="quero falar")).to_be_visible()
    page.evaluate("window.__stayed = true")

    box = page.get_by_test_id("reply-box")
    box.fill("Olá! Aqui é a Ana, em que posso ajudar?")
    box.press("Enter")
    wait_until(
        lambda: "Olá! Aqui é a Ana, em que posso ajudar?" in product.sent_to(phone),
        timeout=20,
        what="the reply's sendText at WAHA",
    )
    mine = conversation.get_by_test_id("message").filter(has_text="Aqui é a Ana")
    expect(mine).to_have_count(1)
    # The simulator acks READ 1.5 s after DEVICE: the status changes on the page, live.
    expect(mine.get_by_test_id("status")).to_have_attribute("data-status", "read")

    product.say(phone, "Queria remarcar minha consulta")
    expect(conversation.get_by_test_id("message").filter(has_text="remarcar")).to_be_visible()
    assert page.evaluate("window.__stayed") is True
    expect(page.get_by_test_id("audit")).to_contain_text("Aqui é a Ana")
    shot(page, "conversation")

    # A message (and the conversation's change with it) arriving while the agent types does
    # not wipe the draft.
    page.get_by_test_id("reply-box").fill("Claro, para qual dia?")
    product.say(phone, "Pode ser na sexta")
    expect(conversation.get_by_test_id("message").filter(has_text="sexta")).to_be_visible()
    expect(page.get_by_test_id("reply-box")).to_have_value("Claro, para qual dia?")

    page.get_by_test_id("close").click()
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "closed")
    assert [text for text in product.sent_to(phone) if "Aqui é a Ana" in text] == [
        "Olá! Aqui é a Ana, em que posso ajudar?"
    ]  # sent once

    assert len(session_keys(product.redis)) >= 1
    before = set(session_keys(product.redis))
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-submit")).to_be_visible()
    # The server-side session is gone, not just the cookie, and Ana gets no more customers.
    assert len(before - set(session_keys(product.redis))) == 1
    assert not agent_online(product, "ana")
    page.goto(f"{product.url}/")
    expect(page.get_by_test_id("login-user")).to_be_visible()


def right_edge(page: Any, hook: str) -> float:
    """Where the element named `hook` ends on the page (px). The live channel may swap the
    conversation's head while it is measured (a taken conversation's state arrives live): a
    measure of the element it replaced (None) is taken again."""

    def measured() -> float | None:
        box = page.get_by_test_id(hook).bounding_box()
        return None if box is None else float(box["x"] + box["width"])

    edge: float = wait_until(measured, timeout=10, interval=0.1, what=f"{hook} to be measured")
    return edge


def test_a_long_link_does_not_push_the_page_past_the_window(product: Product, page: Any) -> None:
    """Customers paste long links: one unbreakable word must wrap inside its message, not widen
    the page and push the actions and details off-screen (found by an audit)."""
    page.set_viewport_size({"width": 1024, "height": 800})
    phone = new_phone()
    login(page, product.url, "bia")
    page.get_by_test_id("presence-toggle").click()
    expect(page.get_by_test_id("presence-toggle")).to_have_attribute("data-online", "true")
    product.bring_to_line(phone)
    # Pasted while in line, so the page opens with it: the layout is what is checked here (the
    # live channel has its own tests, above and in test_live_watcher.py).
    link = "https://exemplo.com.br/agendamento?ref=" + "x9" * 140
    product.say(phone, link)
    wait_until(lambda: link in product.texts_from(phone), timeout=30, what="the link recorded")
    page.get_by_test_id("take-next").click()
    conversation = page.get_by_test_id("conversation")
    expect(conversation).to_be_visible()
    assert phone in page.url
    expect(conversation.get_by_test_id("message").filter(has_text="exemplo.com.br")).to_be_visible()
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "agent")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024
    for hook in ("reply-send", "close", "handback"):
        assert right_edge(page, hook) <= 1024, hook
    page.get_by_test_id("close").click()
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "closed")
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-submit")).to_be_visible()


def test_a_wrong_password_is_refused_and_changes_nothing(product: Product, page: Any) -> None:
    # What a login writes lives under the console's keys (sessions, accounts): compared
    # whole, while the engine goes on with earlier tests' conversations.
    console_keys = f"{CONSOLE.tag}:*"
    before = snapshot(product.redis, console_keys)
    page.goto(f"{product.url}/login")
    shot(page, "login")
    login(page, product.url, "bia", "not the password")
    expect(page.get_by_test_id("login-error")).to_be_visible()
    expect(page.get_by_test_id("login-user")).to_be_visible()
    assert snapshot(product.redis, console_keys) == before
    # Only the failure counters moved (they are what slows the next guesses down).
    assert product.redis.get(CONSOLE.failures("user", "bia")) == b"1"


def test_failed_logins_slow_down_per_account(product: Product) -> None:
    with httpx.Client(base_url=product.url, timeout=30) as client:
        csrf = login_csrf(client.get("/login").text)
        statuses = [
            client.post(
                "/login", data={"user": "chefe", "password": f"guess {n}", "csrf": csrf}
            ).status_code
            for n in range(7)
        ]
        locked = client.post("/login", data={"user": "chefe", "password": PASSWORD, "csrf": csrf})
    assert statuses[:5] == [401] * 5 and 429 in statuses[5:]
    # Even the right password waits until the lock expires.
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert not product.redis.exists(CONSOLE.session("x"))
    product.redis.delete(CONSOLE.failures("user", "chefe"), CONSOLE.lock("user", "chefe"))


def test_a_locked_login_through_nginx_says_one_retry_after(product: Product) -> None:
    """nginx adds `Retry-After: 1` to its own 429s; the console's lockout sends how long the
    lock lasts. Through nginx the browser got both (found by an audit): only the console's
    reaches it now."""
    require_program("nginx")
    if not product.stack.uses_nginx:
        pytest.skip("the stack runs without nginx")
    edge = product.stack.webhook_url.removesuffix("/webhook")
    with httpx.Client(base_url=edge, timeout=30) as client:
        csrf = login_csrf(client.get("/login").text)
        for n in range(7):
            client.post("/login", data={"user": "bia", "password": f"guess {n}", "csrf": csrf})
        locked = client.post("/login", data={"user": "bia", "password": PASSWORD, "csrf": csrf})
    try:
        assert locked.status_code == 429
        [retry_after] = locked.headers.get_list("retry-after")
        assert int(retry_after) >= 1
    finally:
        product.redis.delete(CONSOLE.failures("user", "bia"), CONSOLE.lock("user", "bia"))


def test_missing_csrf_and_someone_elses_conversation_are_refused(product: Product) -> None:
    phone = new_phone()
    product.bring_to_line(phone)
    chat = f"{phone}@c.us"
    ana = http_login(product, "ana")
    bia = http_login(product, "bia")
    try:
        token = page_csrf(ana)
        went = ana.post("/presence", data={"online": "1"}, headers={"X-CSRF-Token": token})
        assert went.status_code == 200
        taken = ana.post("/take-next", data={"csrf": token})
        assert taken.status_code == 303 and phone in taken.headers["location"]
        wait_until(
            lambda: (
                product.redis.hget(
                    engine_keys_for("default", chat, 1, KEY_PREFIX).state, "agent_id"
                )
                == b"ana"
            ),
            timeout=20,
            what="the conversation to be Ana's",
        )
        product.settle()
        sent_before = product.sent_to(phone)
        before = snapshot(product.redis)

        # Ana's own conversation, without the CSRF token: refused.
        for path, data in (
            (f"/c/default/{chat}/reply", {"text": "sem token"}),
            (f"/c/default/{chat}/close", {}),
            (f"/c/default/{chat}/handback", {}),
            ("/take-next", {}),
            ("/presence", {"online": "0"}),
        ):
            refused = ana.post(path, data=data)
            assert refused.status_code == 403, (path, refused.text)
            wrong = ana.post(path, data={**data, "csrf": "forged"})
            assert wrong.status_code == 403, path

        # Bia, logged in with her own valid token, on Ana's conversation: refused, and the
        # page never lets her name another agent (agent_id is ignored, the session decides).
        bia_token = page_csrf(bia)
        for path, data in (
            (f"/c/default/{chat}/reply", {"text": "sou a Bia", "agent_id": "ana"}),
            (f"/c/default/{chat}/close", {}),
            (f"/c/default/{chat}/handback", {}),
        ):
            refused = bia.post(path, data={**data, "csrf": bia_token})
            assert refused.status_code == 403, (path, refused.text)
        assert bia.get(f"/c/default/{chat}").status_code == 403
        assert bia.get("/events", params={"conv": f"default|{chat}"}).status_code == 403

        after = snapshot(product.redis)
        assert after == before
        assert product.sent_to(phone) == sent_before
    finally:
        ana.close()
        bia.close()


def stream_key(entry_id: Any) -> tuple[int, ...]:
    """A Redis stream id ("1700000000000-3", bytes or str) as a comparable tuple."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return tuple(int(part) for part in text.split("-"))


def test_an_open_page_stops_following_a_conversation_another_agent_took(
    product: Product,
) -> None:
    """Bia opened a waiting customer's page (everyone in line is every agent's to see); Ana
    took the customer. Bia's open page must not receive what Ana and the customer write next
    (found by an audit: the channel checked only when it connected)."""
    phone = new_phone()
    product.bring_to_line(phone)
    chat = f"{phone}@c.us"
    token = f"default|{chat}"
    keys = engine_keys_for("default", chat, 1, KEY_PREFIX)
    ana = http_login(product, "ana")
    bia = http_login(product, "bia")
    try:
        assert bia.get(f"/c/default/{chat}").status_code == 200  # in line: hers to see
        since = page_since(bia)
        with bia.stream(
            "GET", "/events", params={"since": since, "conv": token}, timeout=30
        ) as response:
            assert response.status_code == 200
            ana_token = page_csrf(ana)
            ana.post("/presence", data={"online": "1"}, headers={"X-CSRF-Token": ana_token})
            taken = ana.post("/take-next", data={"csrf": ana_token})
            assert phone in taken.headers["location"]
            wait_until(lambda: product.redis.hget(keys.state, "agent_id") == b"ana", timeout=20)
            replied = ana.post(
                f"/c/default/{chat}/reply", data={"csrf": ana_token, "text": "SEGREDO-DA-ANA"}
            )
            assert replied.status_code in (200, 303)
            product.say(phone, "meu CPF é PRIVATE-123")

            def secret_event() -> str | None:
                """The id of the console's event that brings the customer's message."""
                entries: Any = product.redis.xrange(keys.history)
                secret = next((i for i, f in entries if b"PRIVATE-123" in f[b"text"]), None)
                if secret is None:
                    return None
                events: Any = product.redis.xrange(CONSOLE.events)
                for event_id, fields in events:
                    if (
                        fields.get(b"kind") == b"msg"
                        and fields.get(b"token") == token.encode()
                        and stream_key(fields.get(b"upto", b"0-0")) >= stream_key(secret)
                    ):
                        return bytes(event_id).decode()
                return None

            last = wait_until(secret_event, timeout=20, what="the console's event of the message")
            # Every event up to that one, as Bia's open page receives them.
            seen = sse_events(
                response, lambda m: stream_key(m.get("id", "0-0")) >= stream_key(last)
            )
        assert seen and seen[-1]["id"] == last
        data = "".join(m.get("data", "") for m in seen)
        assert "SEGREDO-DA-ANA" not in data and "PRIVATE-123" not in data
        assert bia.get(f"/c/default/{chat}").status_code == 403
    finally:
        # Leave nothing for the next tests' "Atender próximo": Ana closes the conversation
        # and goes offline.
        ana_token = page_csrf(ana)
        ana.post(f"/c/default/{chat}/close", data={"csrf": ana_token})
        ana.post("/presence", data={"online": "0"}, headers={"X-CSRF-Token": ana_token})
        ana.close()
        bia.close()


def test_an_agent_who_handled_a_customer_does_not_see_them_while_another_agent_has_them(
    product: Product,
) -> None:
    """Ana answered a customer and handed them back to the bot; later Bia took them. Ana may
    look back at a conversation she handled while no one has it, not while Bia does: not its
    page, not its live channel (found by an audit: both were open to her, with what the
    customer told Bia)."""
    phone = new_phone()
    chat = f"{phone}@c.us"
    token = f"default|{chat}"
    keys = engine_keys_for("default", chat, 1, KEY_PREFIX)
    page = f"/c/default/{chat}"
    ana = http_login(product, "ana")
    bia = http_login(product, "bia")

    def state() -> bytes | None:
        value: Any = product.redis.hget(keys.state, "state")
        return value

    def take_next(client: httpx.Client, agent_id: str) -> str:
        csrf = page_csrf(client)
        client.post("/presence", data={"online": "1"}, headers={"X-CSRF-Token": csrf})
        taken = client.post("/take-next", data={"csrf": csrf})
        assert phone in taken.headers["location"]
        wait_until(
            lambda: product.redis.hget(keys.state, "agent_id") == agent_id.encode(), timeout=20
        )
        client.post("/presence", data={"online": "0"}, headers={"X-CSRF-Token": csrf})
        return csrf

    try:
        product.bring_to_line(phone)
        ana_csrf = take_next(ana, "ana")
        ana.post(f"{page}/reply", data={"csrf": ana_csrf, "text": "Oi, aqui é a Ana"})
        ana.post(f"{page}/handback", data={"csrf": ana_csrf})
        wait_until(lambda: state() == b"bot", timeout=20, what="the handback")
        assert ana.get(page).status_code == 200  # handled by her, no one has it

        product.say(phone, "quero falar com um atendente")
        wait_until(lambda: product.waiting(phone), timeout=20, what=f"{phone} in the line")
        bia_csrf = take_next(bia, "bia")
        bia.post(f"{page}/reply", data={"csrf": bia_csrf, "text": "SEGREDO-DA-BIA"})
        assert ana.get(page).status_code == 403
        assert ana.get("/events", params={"conv": token}).status_code == 403
        assert bia.get(page).status_code == 200

        bia.post(f"{page}/close", data={"csrf": bia_csrf})
        wait_until(lambda: state() == b"closed", timeout=20, what="the close")
        assert ana.get(page).status_code == 200  # closed: handled by her, no one has it
    finally:
        if state() in (b"agent", b"waiting"):
            bia.post(f"{page}/close", data={"csrf": page_csrf(bia)})
        ana.close()
        bia.close()


def test_an_admin_cannot_write_to_a_conversation_that_does_not_exist(product: Product) -> None:
    """As in the operator API, only existing conversations are written to: an admin's form on
    a made-up number answers 404, messages nobody and stores nothing."""
    boss = http_login(product, "chefe")
    try:
        product.settle()
        before = snapshot(product.redis)
        token = page_csrf(boss)
        phone = new_phone()
        for path, data in (
            (f"/c/default/{phone}@c.us/reply", {"text": "mensagem fria"}),
            (f"/c/default/{phone}@c.us/close", {}),
            (f"/c/default/{phone}@c.us/handback", {}),
            ("/c/nosuchsession/1@c.us/close", {}),
            ("/c/a%7Cb/c/handback", {}),
        ):
            refused = boss.post(path, data={**data, "csrf": token})
            assert refused.status_code == 404, (path, refused.status_code, refused.text)
        upload = boss.post(
            f"/c/default/{phone}@c.us/media",
            data={"csrf": token},
            files={"file": ("a.png", b"\x89PNG\r\n", "image/png")},
        )
        assert upload.status_code == 404
        assert snapshot(product.redis) == before
        assert product.sent_to(phone) == []
    finally:
        boss.close()


def test_an_admin_sees_every_agent_and_takes_a_conversation_back(product: Product) -> None:
    phone = new_phone()
    product.bring_to_line(phone)
    chat = f"{phone}@c.us"
    state_key = engine_keys_for("default", chat, 1, KEY_PREFIX).state
    bia = http_login(product, "bia")
    boss = http_login(product, "chefe")
    try:
        token = page_csrf(bia)
        bia.post("/presence", data={"online": "1"}, headers={"X-CSRF-Token": token})
        assert phone in bia.post("/take-next", data={"csrf": token}).headers["location"]
        wait_until(lambda: product.redis.hget(state_key, "agent_id") == b"bia", timeout=20)

        home = boss.get("/")
        assert 'data-testid="agents"' in home.text and phone in home.text
        # Every account, also one that never went online (the admin herself, so far).
        section = home.text.split('data-testid="agents"', 1)[1].split("</section>", 1)[0]
        listed = set(re.findall(r"<small>\(([\w.@+-]+)\) ", section))
        assert {"ana", "bia", "chefe"} <= listed, section
        boss_token = page_csrf(boss)
        answer = boss.post(f"/c/default/{chat}/handback", data={"csrf": boss_token, "nonce": "n1"})
        assert answer.status_code == 303
        wait_until(lambda: product.redis.hget(state_key, "state") == b"bot", timeout=20)
        audit = boss.get(f"/c/default/{chat}").text
        assert "chefe" in audit and "devolveu ao robô" in audit
        # The same form sent again queues nothing more (named after its nonce).
        again = boss.post(f"/c/default/{chat}/handback", data={"csrf": boss_token, "nonce": "n1"})
        assert again.status_code == 303
        entries: Any = product.redis.xrange(CONSOLE.audit(f"default|{chat}"))
        assert [e[1][b"action"] for e in entries] == [b"took", b"handed_back"]
    finally:
        bia.close()
        boss.close()


def test_agent_accounts_from_the_command_line(product: Product) -> None:
    made = product.agent("add", "duda", "--name", "Duda")
    assert made.returncode == 0, made.stderr
    again = product.agent("add", "duda", "--name", "Duda")
    assert again.returncode == 2 and "exists already" in again.stderr
    short = product.agent("add", "edu", password="curta")
    assert short.returncode == 2 and not product.redis.exists(CONSOLE.account("edu"))
    duda = http_login(product, "duda")
    went = duda.post("/presence", data={"online": "1"}, headers={"X-CSRF-Token": page_csrf(duda)})
    assert went.status_code == 200 and agent_online(product, "duda")
    duda.close()
    assert product.agent("passwd", "duda", password="outra senha boa").returncode == 0
    assert not product.redis.smembers(CONSOLE.account_sessions("duda"))  # sessions ended
    http_login(product, "duda", "outra senha boa").close()
    listed = product.agent("list", password=None)
    assert "duda\tagent\tDuda" in listed.stdout
    assert product.agent("remove", "duda", password=None).returncode == 0
    assert not product.redis.exists(CONSOLE.account("duda"))
    assert not agent_online(product, "duda")  # no customer goes to a removed agent
    assert product.agent("remove", "duda", password=None).returncode == 1


def sse_events(response: httpx.Response, until: Any, limit: int = 200) -> list[dict[str, str]]:
    """SSE messages from a streaming response until `until(message)` is true."""
    seen: list[dict[str, str]] = []
    message: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if message:
                seen.append(message)
                if until(message) or len(seen) >= limit:
                    return seen
            message = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        message[name] = message.get(name, "") + value.removeprefix(" ")
    return seen


def page_since(client: httpx.Client) -> str:
    found = re.search(r'sse-connect="/events\?since=([0-9-]+)', client.get("/").text)
    assert found
    return found[1]


def test_a_reconnecting_page_catches_up_from_its_last_event_id(product: Product) -> None:
    """Events that happened while the page was away arrive on reconnect, in order, with
    their ids, and nothing older than the id the browser gives comes again."""
    client = http_login(product, "bia")
    try:
        since = page_since(client)
        phone = new_phone()
        product.bring_to_line(phone)  # happens while no channel is open
        with client.stream(
            "GET", "/events", headers={"Last-Event-ID": since}, timeout=30
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            caught = sse_events(response, lambda m: phone in m.get("data", ""))
        assert phone in caught[-1]["data"] and 'data-testid="line-entry"' in caught[-1]["data"]
        ids = [m["id"] for m in caught if "id" in m]
        assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
        assert all(tuple(map(int, i.split("-"))) > tuple(map(int, since.split("-"))) for i in ids)
        # From the last id on, the same events do not come again.
        last = ids[-1]
        with client.stream(
            "GET", "/events", headers={"Last-Event-ID": last}, timeout=30
        ) as response:
            product.say(phone, "ainda estou aqui")
            again = sse_events(response, lambda m: "id" in m)
        assert all(m["id"] != i for m in again if "id" in m for i in ids)
    finally:
        client.close()


def test_the_console_and_its_live_channel_through_nginx(product: Product) -> None:
    """nginx proxies `/` and the live channel, unbuffered: an event reaches the browser while
    the stream stays open, and the console's pages get the console's security policy."""
    require_program("nginx")
    if not product.stack.uses_nginx:
        pytest.skip("the stack runs without nginx")
    edge = product.stack.webhook_url.removesuffix("/webhook")
    client = httpx.Client(base_url=edge, timeout=30)
    try:
        form = client.get("/login")
        assert form.status_code == 200 and 'data-testid="login-user"' in form.text
        policy = form.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "form-action 'self'" in policy
        assert form.headers["x-frame-options"] == "DENY"
        logged = client.post(
            "/login", data={"user": "bia", "password": PASSWORD, "csrf": login_csrf(form.text)}
        )
        assert logged.status_code == 303
        assert client.get("/static/vendor/htmx-2.0.11.min.js").status_code == 200
        # The API keeps its own strict policy and its bearer token.
        api = client.get("/api/conversations")
        assert api.status_code == 401
        assert "form-action 'none'" in api.headers["content-security-policy"]
        since = page_since(client)
        phone = new_phone()
        with client.stream("GET", f"/events?since={since}", timeout=30) as response:
            assert response.status_code == 200
            product.bring_to_line(phone)  # after the stream opened: it must flow through
            caught = sse_events(response, lambda m: phone in m.get("data", ""))
        assert phone in caught[-1]["data"]
    finally:
        client.close()


def test_canned_replies_unread_counts_and_closed_search(product: Product, page: Any) -> None:
    phone = new_phone()
    login(page, product.url, "chefe")
    page.goto(f"{product.url}/canned")
    page.get_by_test_id("canned-shortcut").fill("ola")
    page.get_by_test_id("canned-text").fill("Olá! Sou da recepção, em que posso ajudar?")
    page.get_by_test_id("canned-save").click()
    expect(page.locator(".canned")).to_contain_text("/ola")

    page.get_by_test_id("presence-toggle").click()
    expect(page.get_by_test_id("presence-toggle")).to_have_attribute("data-online", "true")
    product.bring_to_line(phone, name="Rita Conceição")
    expect(page.get_by_test_id("line-entry").filter(has_text=phone)).to_be_visible()
    page.get_by_test_id("take-next").click()
    expect(page.get_by_test_id("conversation")).to_be_visible()

    # "/" offers the canned replies; Enter inserts the highlighted one, Enter again sends it.
    box = page.get_by_test_id("reply-box")
    box.press_sequentially("/ol")
    expect(page.locator(".canned-menu")).to_be_visible()
    box.press("Enter")
    expect(box).to_have_value("Olá! Sou da recepção, em que posso ajudar?")
    box.press("Enter")
    wait_until(
        lambda: "Olá! Sou da recepção, em que posso ajudar?" in product.sent_to(phone),
        timeout=20,
        what="the canned reply at WAHA",
    )

    # Away from the conversation, a customer's message shows as unread in "my conversations".
    page.goto(f"{product.url}/")
    page.evaluate("window.__stayed = true")
    product.say(phone, "Pode ser amanhã?")
    mine = page.get_by_test_id("mine").locator("li").filter(has_text=phone)
    expect(mine.get_by_test_id("unread")).to_have_text("1")
    assert page.evaluate("window.__stayed") is True
    mine.get_by_role("link").click()
    expect(page.get_by_test_id("conversation")).to_be_visible()
    page.get_by_test_id("close").click()
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "closed")

    # By phone or name, the name without its accents or case as attendants type it.
    for query in (phone[-6:], "rita", "conceicao", "CONCEIÇÃO"):
        page.goto(f"{product.url}/conversations?q={query}")
        expect(page.get_by_test_id("search-results")).to_contain_text(phone)
    page.goto(f"{product.url}/conversations?q=ninguem-com-esse-nome")
    expect(page.get_by_test_id("search-results")).not_to_contain_text(phone)
