"""The attendants' console in a real browser against the real product.

One private stack per module, built by wsm/load/product.py exactly as `wsm loadtest` builds it:
Redis, the WAHA simulator as WAHA (it receives every sendText, acks DEVICE then READ, and
posts the customers' messages as signed webhooks), the gateway, the worker fleet running the
engine, and `wsm api`, which serves the console. Accounts are made with `wsm agent add`.
The browser is Debian's chromium driven by Playwright (browser downloads are impossible here):
outside CI a missing chromium or playwright skips, naming it; with CI=true it fails.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.keys import LineKeys, conversation_token, engine_keys_for, split_conversation_token
from tests.support.polling import wait_until
from tests.support.product import started_product
from tests.support.tools import in_ci, require_program
from wsm.load.product import KEY_PREFIX, ProductStack
from wsm.load.quiet import wait_quiet

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "console"
PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_phones = itertools.count(1)


def new_phone() -> str:
    return f"55119{os.getpid() % 1000:03d}{next(_phones):05d}"


@dataclass
class Product:
    stack: ProductStack
    redis: redis.Redis
    sim: httpx.Client

    @property
    def url(self) -> str:
        return self.stack.api_url

    def say(self, phone: str, text: str) -> None:
        response = self.sim.post("/_sim/inbound", json={"phone": phone, "text": text})
        response.raise_for_status()

    def chat(self, phone: str) -> list[dict[str, Any]]:
        response = self.sim.get(f"/_sim/chats/{phone}@c.us/messages")
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages

    def sent_to(self, phone: str) -> list[str]:
        """What WAHA (the simulator) received as sendText for this customer."""
        return [m["text"] for m in self.chat(phone) if m["direction"] == "out"]

    def agent(
        self, *args: str, password: str | None = PASSWORD
    ) -> subprocess.CompletedProcess[str]:
        """`wsm agent ...` against the stack's Redis, the password on stdin."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": self.stack.redis_url,
            "WSM_KEY_PREFIX": KEY_PREFIX,
        }
        return subprocess.run(
            [sys.executable, "-m", "wsm", "agent", *args],
            input=None if password is None else password + "\n",
            env=env,
            cwd=str(self.stack.options.home),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def settle(self) -> None:
        """Nothing under way: every reply acknowledged READ by the simulator's customers, and
        nothing queued, leased, waiting to be sent or to be delivered as a webhook."""

        def all_read() -> bool:
            chats = self.sim.get("/_sim/chats").json()
            for chat in chats:
                messages = self.sim.get(f"/_sim/chats/{chat['chat_id']}/messages").json()
                if any(
                    m["direction"] == "out" and (m["ack"] or 0) < 3 for m in messages["messages"]
                ):
                    return False
            return True

        wait_until(all_read, timeout=30, interval=0.1, what="every reply read")
        # In a thread of its own: Playwright's sync API keeps an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            settled = pool.submit(
                asyncio.run,
                wait_quiet(self.stack.redis_url, self.stack.sim_url, timeout=30, prefix=KEY_PREFIX),
            ).result()
        assert settled, "the product did not settle"

    def empty_line(self) -> None:
        """Everyone still waiting writes *sair* and leaves: "Atender próximo" in the next test
        must take that test's own customer."""
        line = LineKeys(KEY_PREFIX).waiting("default")
        members: Any = self.redis.zrange(line, 0, -1)
        for member in members:
            _, chat_id = split_conversation_token(member.decode())
            self.say(chat_id.split("@", 1)[0], "sair")
        wait_until(lambda: self.redis.zcard(line) == 0, timeout=20, what="an empty line")

    def texts_from(self, phone: str) -> list[str]:
        """What the engine recorded in this customer's history as theirs (dir=in)."""
        history = engine_keys_for("default", f"{phone}@c.us", 1, KEY_PREFIX).history
        entries: Any = self.redis.xrange(history)
        return [f[b"text"].decode() for _, f in entries if f.get(b"dir") == b"in"]

    def waiting(self, phone: str) -> bool:
        """The customer is in the line (the menu brain handed them over)."""
        line = LineKeys(KEY_PREFIX).waiting("default")
        return self.redis.zscore(line, conversation_token("default", f"{phone}@c.us")) is not None

    def bring_to_line(self, phone: str, name: str = "Carla Souza") -> None:
        """Through the menu brain: greeting, name, then asking for a person."""
        self.say(phone, "oi")
        wait_until(lambda: self.sent_to(phone), timeout=20, what="the bot's greeting")
        self.say(phone, name)
        wait_until(lambda: len(self.sent_to(phone)) >= 2, timeout=20, what="the bot's menu")
        self.say(phone, "quero falar com um atendente")
        wait_until(lambda: self.waiting(phone), timeout=20, what=f"{phone} in the line")


@contextmanager
def console_product(
    home: Path, accounts: Iterable[tuple[str, str, str]], **options: Any
) -> Iterator[Product]:
    """The product started under `home` (tests/support/product.py) with the accounts
    `(id, name, role)` made by `wsm agent add`, on the product's defaults (WSM_AUTO_ASSIGN on):
    customers wait in the line until a console agent takes them ("Atender próximo"; the
    console's agents take by hand), with no position notices in between."""
    env = {"WSM_POSITION_NOTICE_INTERVAL_SECONDS": "0"}
    with started_product(home, env=env, **options) as stack:
        client = redis.Redis.from_url(stack.redis_url)
        sim = httpx.Client(base_url=stack.sim_url, timeout=30)
        view = Product(stack, client, sim)
        try:
            for agent_id, name, role in accounts:
                done = view.agent("add", agent_id, "--name", name, "--role", role)
                assert done.returncode == 0, done.stderr
            yield view
        finally:
            sim.close()
            client.close()


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    accounts = (("ana", "Ana", "agent"), ("bia", "Bia", "agent"), ("chefe", "Chefe", "admin"))
    with console_product(
        tmp_path_factory.mktemp("console"),
        accounts,
        concurrency=4,
        # nginx in front when installed (always in CI): the console is also tried through it.
        nginx="auto",
        # The READ ack comes late enough to be seen arriving.
        sim_args=("--read-delay", "1.5"),
    ) as view:
        yield view


@pytest.fixture(autouse=True)
def _empty_line_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "product" in request.fixturenames:
        product: Product = request.getfixturevalue("product")
        product.empty_line()


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci():
            pytest.fail("playwright is not installed; `pip install -e '.[test]'` installs it")
        pytest.skip("playwright is not installed (pip install playwright)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_program("chromium")
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1024, "height": 600}, locale="pt-BR")
    context.set_default_timeout(15_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        context.close()


def login(page: Any, url: str, user: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/login")
    page.get_by_test_id("login-user").fill(user)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def shot(page: Any, name: str) -> None:
    """A screenshot for docs/console.md, small: JPEG-like sizes from a PNG of one viewport."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
