"""What a customer controls, in headless Chromium against the real product (conftest.py): their
name, their messages, a file's name and type, a location's name, a contact card. WAHA's
webhooks carry it to the console as the customer wrote it, so every place it shows (the line,
the conversation, its live updates) must show it as text, and the page must hold its shape
whatever it is: a right-to-left override, a name of 300 characters, a phone's narrow window.
A stored file opened on its own stays data, behind nginx as well (found by an audit: nginx's
policy replaced the API's sandboxing one)."""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from api.routes.media import MEDIA_CSP
from shared.keys import engine_keys_for
from tests.console.conftest import Product, login, new_phone, shot
from tests.console.support import expect, http_login
from tests.console.test_console_media import png
from tests.support.polling import wait_until
from tests.support.tools import require_program
from tests.support.waha import compact, load_fixture, webhook_headers
from wsm.load.product import KEY_PREFIX

pytestmark = pytest.mark.slow

# Markup that would show as an element (data-inj) if any of it were taken as HTML; the CSP
# would stop its script, so the element itself is what is looked for.
TAG = "<img src=x data-inj onerror=alert(1)>"
HOSTILE = [
    "<script>alert(1)</script><b data-inj>s</b>",
    '"><svg data-inj onload=alert(1)>',
    "'><i data-inj>q</i>",
    '<div hx-get="/logout" hx-trigger="load" data-inj>hx</div>',
    '<a href="javascript:alert(1)" data-inj>clique</a>',
]
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
# Where a page keeps the CSP violations it met (the policy would block an injected script; the
# test still wants to know one was there).
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", e => window.__csp.push(e.violatedDirective));
"""
CONTROLS = ("reply-box", "reply-send", "close", "handback", "media-upload-submit", "take-next",
            "logout", "presence-toggle")  # fmt: skip


def go_online(page: Any, product: Product, agent: str) -> None:
    login(page, product.url, agent)
    toggle = page.get_by_test_id("presence-toggle")
    if toggle.get_attribute("data-online") != "true":
        toggle.click()
        expect(page.get_by_test_id("presence-toggle")).to_have_attribute("data-online", "true")


def take_next(page: Any, phone: str) -> None:
    page.get_by_test_id("take-next").click()
    expect(page.get_by_test_id("conversation")).to_be_visible()
    assert phone in page.url
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "agent")


def webhook(product: Product, fixture: str, chat: str, **payload: Any) -> None:
    """A WAHA `message` event shaped like tests/fixtures/waha/<fixture>, from `chat`, signed."""
    document = load_fixture(fixture)
    now = time.time()
    document.update(id=f"evt_{uuid.uuid4().hex[:26]}", timestamp=int(now * 1000))
    document["session"] = "default"
    document["payload"].update(
        id=f"false_{chat}_{uuid.uuid4().hex[:20].upper()}", timestamp=int(now), **{"from": chat}
    )
    document["payload"].update(payload)
    body = compact(document)
    answer = httpx.post(
        product.stack.webhook_url,
        content=body,
        headers=webhook_headers(body, product.stack.hmac_key),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def send_file(product: Product, phone: str, data: bytes, mimetype: str, **extra: Any) -> None:
    """The customer sends a file through WAHA (the simulator downloads it and says so)."""
    media = {"data": base64.b64encode(data).decode(), "mimetype": mimetype, **extra}
    answer = product.sim.post("/_sim/inbound", json={"phone": phone, "text": "", "media": media})
    assert answer.status_code == 200, answer.text


def injected(page: Any) -> list[str]:
    found: list[str] = page.eval_on_selector_all("[data-inj]", "els => els.map(e => e.outerHTML)")
    return found + [f"csp: {v}" for v in page.evaluate("window.__csp")]


def drawn(locator: Any) -> dict[str, float]:
    """The element's box once it is drawn: the live channel may be swapping it in just then
    (its box is None for that moment)."""
    box: dict[str, float] = wait_until(locator.bounding_box, timeout=10, what="the element drawn")
    return box


def left(locator: Any) -> float:
    return float(drawn(locator)["x"])


def right(locator: Any) -> float:
    box = drawn(locator)
    return float(box["x"] + box["width"])


def reads_left_to_right(locator: Any) -> bool:
    """The element's text is drawn in its own order: its first character left of its last.
    Read once it is laid out (a node the live channel is swapping in has no boxes yet: every
    character at 0): None until then."""

    def read() -> list[bool]:
        order: bool | None = locator.evaluate(
            """el => {
                const text = el.firstChild, range = document.createRange();
                const at = i => { range.setStart(text, i); range.setEnd(text, i + 1);
                                  return range.getBoundingClientRect(); };
                const first = at(0), last = at(text.length - 1);
                if (!first.width || !last.width) return null;
                return first.x < last.x;
            }"""
        )
        return [] if order is None else [order]

    return wait_until(read, timeout=10, what="the text laid out")[0]


# --- injection ---------------------------------------------------------------------------------
def test_what_a_customer_sends_shows_as_text_live_and_on_reload(
    product: Product, page: Any
) -> None:
    page.add_init_script(WATCH)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    phone, chat = (p := new_phone()), f"{p}@c.us"
    go_online(page, product, "chefe")
    product.bring_to_line(phone, TAG)  # the name the bot collected
    entry = page.get_by_test_id("line-entry").filter(has_text=phone)
    expect(entry).to_contain_text(TAG)  # live, into the line
    take_next(page, phone)

    # Everything arrives while the page is open: the live channel inserts it.
    for text in HOSTILE:
        product.say(phone, text)
    send_file(product, phone, b"<html><script>alert(1)</script></html>", "text/html",
              filename=f'"{TAG}.html', kind="document")  # fmt: skip
    webhook(product, "message-media-location.json", chat,
            location={**load_fixture("message-media-location.json")["payload"]["location"],
                      "name": TAG, "address": "</script>"})  # fmt: skip
    number = "+55 11 <b data-inj>9</b>"
    card = f"BEGIN:VCARD\nVERSION:3.0\nFN:{TAG}\nTEL;type=CELL:{number}\nEND:VCARD"
    contact = load_fixture("message-media-contact.json")["payload"]
    contact["_data"]["message"]["contactMessage"] = {"displayName": TAG, "vcard": card}
    webhook(product, "message-media-contact.json", chat, vCards=[card], _data=contact["_data"])

    messages = page.get_by_test_id("conversation").get_by_test_id("message")
    for text in HOSTILE:
        expect(messages.filter(has_text=text)).to_have_count(1)
    expect(page.get_by_test_id("message-media-document")).to_have_text(f'"{TAG}.html')
    expect(page.get_by_test_id("message-location")).to_contain_text(TAG)
    expect(page.get_by_test_id("message-contact")).to_contain_text(f"{TAG} {number}")
    assert injected(page) == [] and dialogs == []

    page.reload()
    expect(page.get_by_test_id("message-contact")).to_contain_text(TAG)
    expect(page.locator("h1")).to_contain_text(TAG)
    assert page.title().startswith(TAG)
    assert injected(page) == [] and dialogs == []
    # The file is a download under a name that cannot end the header, never a page.
    document = page.get_by_test_id("message-media-document")
    answer = page.request.get(product.url + (document.get_attribute("href") or ""))
    assert answer.headers["content-disposition"].startswith('attachment; filename="_')
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]


def test_a_right_to_left_override_in_a_name_does_not_reverse_the_phone(
    product: Product, page: Any
) -> None:
    """A customer whose name starts with U+202E would have the phone number and the wait
    shown after it reversed (5511… read as …1155): the name is set apart from what follows."""
    phone = new_phone()
    go_online(page, product, "ana")
    product.bring_to_line(phone, RLO + "Carla Souza")
    entry = page.get_by_test_id("line-entry").filter(has_text=phone)
    expect(entry).to_be_visible()
    name, number = entry.locator("a"), entry.locator(".phone")
    assert left(number) > right(name)
    assert reads_left_to_right(number) and reads_left_to_right(entry.locator(".waited"))

    take_next(page, phone)
    head = page.locator(".conv-head h1")
    expect(head.locator(".phone")).to_be_visible()  # boxes only once drawn
    assert left(head.locator(".phone")) > right(head.locator(".name"))
    assert reads_left_to_right(head.locator(".phone"))
    mine = page.get_by_test_id("mine").locator("li").filter(has_text=phone)
    expect(mine.locator(".phone")).to_be_visible()
    assert left(mine.locator(".phone")) > right(mine.locator("a"))


# --- layout ------------------------------------------------------------------------------------
def test_a_name_of_300_characters_keeps_the_page_in_the_window(product: Product, page: Any) -> None:
    """One line for a name however long (cut with "…"; the whole of it in the details): the
    line, the admin's list of agents and the conversation's head stay in their columns, and the
    conversation's actions and its reply box are both in the first screen."""
    page.set_viewport_size({"width": 1024, "height": 768})
    phone, chat = (p := new_phone()), f"{p}@c.us"
    go_online(page, product, "chefe")
    product.bring_to_line(phone)
    product.settle()
    long_name = "Maria" + "x" * 295  # no space: nowhere to wrap
    state = engine_keys_for("default", chat, 1, KEY_PREFIX).state
    collected = orjson.loads(product.redis.hget(state, "collected") or b"{}")
    product.redis.hset(state, "collected", orjson.dumps({**collected, "name": long_name},
                                                        option=orjson.OPT_SORT_KEYS))  # fmt: skip
    page.reload()
    take_next(page, phone)
    expect(page.get_by_test_id("facts")).to_contain_text(long_name)
    side = page.locator(".side")
    expect(side.get_by_test_id("agents")).to_contain_text("Maria")
    assert side.evaluate("el => el.scrollWidth <= el.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024
    assert drawn(page.locator(".conv-head h1"))["height"] < 40  # one line
    for hook in CONTROLS:
        box = drawn(page.get_by_test_id(hook))
        assert box["x"] + box["width"] <= 1024, hook
    # Both ends of the conversation in the first screen: its actions and the reply box.
    for hook in ("close", "handback", "reply-box", "reply-send"):
        box = drawn(page.get_by_test_id(hook))
        assert box["y"] >= 0 and box["y"] + box["height"] <= 768, hook
    page.get_by_test_id("close").click()
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "closed")


def test_a_phone_sized_window_shows_the_whole_console(product: Product, page: Any) -> None:
    """At 390 px (a phone) the console is one column: nothing wider than the window, every
    control within it, the reply box wide enough to write in."""
    page.set_viewport_size({"width": 390, "height": 844})
    phone = new_phone()
    go_online(page, product, "bia")
    product.bring_to_line(phone, "Fernanda Albuquerque")
    expect(page.get_by_test_id("line-entry").filter(has_text=phone)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    take_next(page, phone)
    product.say(phone, "Oi! Consigo remarcar minha consulta de quinta para sexta de manhã?")
    expect(page.get_by_test_id("message").filter(has_text="remarcar")).to_be_visible()
    shot(page, "phone")  # docs/console.md
    product.say(phone, "https://exemplo.com.br/agendamento?ref=" + "x9" * 2000)
    expect(page.get_by_test_id("message").filter(has_text="exemplo.com.br")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for hook in CONTROLS:
        box = drawn(page.get_by_test_id(hook))
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, hook
    assert drawn(page.get_by_test_id("reply-box"))["width"] >= 200
    page.get_by_test_id("close").click()
    expect(page.get_by_test_id("conv-state")).to_have_attribute("data-state", "closed")


# --- stored files behind nginx -----------------------------------------------------------------
def test_a_stored_file_opened_through_nginx_is_sandboxed(product: Product, page: Any) -> None:
    """The media route sends a sandboxing policy; nginx replaces every upstream policy with
    its own, so its own for stored files must sandbox them too: a file opened in a tab of its
    own runs in no origin (`null`), not the console's."""
    require_program("nginx")
    if not product.stack.uses_nginx:
        pytest.skip("the stack runs without nginx")
    edge = product.stack.webhook_url.removesuffix("/webhook")
    phone, chat = (p := new_phone()), f"{p}@c.us"
    product.bring_to_line(phone)
    send_file(product, phone, png(), "image/png", kind="image")
    chefe = http_login(product, "chefe")
    try:

        def media_id() -> str | None:
            page_html = chefe.get(f"/c/default/{chat}").text
            found = re.search(r'src="(/api/media/[0-9a-f]{32})"', page_html)
            return found[1] if found else None

        path = wait_until(media_id, timeout=30, what="the file in the history")
    finally:
        chefe.close()
    login(page, edge, "chefe")
    expect(page.get_by_test_id("take-next")).to_be_visible()
    answer = page.goto(edge + path)
    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"] == "image/png"
    # Every directive of the API's own policy, so the two cannot drift apart.
    served = {part.strip() for part in answer.headers["content-security-policy"].split(";")}
    assert {part.strip() for part in MEDIA_CSP.split(";")} <= served
    assert page.evaluate("window.origin") == "null"
