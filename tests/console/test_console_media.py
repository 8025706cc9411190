"""Media in the console, in headless Chromium against the real product (conftest.py): a
customer's photo shows, a voice note plays with its transcript, a document downloads, a file
that never arrived says so; an agent sends a file from the conversation's form, and it reaches
WAHA (the simulator, a WAHA Plus); with a WAHA Core the attendant is told that this WAHA does
not send files. Every refusal (no CSRF token, someone else's conversation, too big, a type that
may not be sent, no file, WAHA Core remembered) stores nothing and sends nothing.

The history is seeded with the engine's own functions (the media store's `save`, the
history's `append_writes`), on the conversation the menu brain handed over, with real files:
a PNG, an Ogg Opus voice note and a PDF, built here byte by byte.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis

from engine import parts as engine_parts
from engine.history import HistoryEntry, HistoryKeys, append_writes
from shared.clock import now_ms
from shared.keys import conversation_token, engine_keys_for
from tests.console.conftest import Product, console_product, login, new_phone, shot
from tests.console.support import expect, http_login, page_csrf, snapshot
from tests.engine.harness import apply_writes, settings_for
from tests.support.polling import wait_until
from tests.support.tools import require_program
from wsm.load.product import KEY_PREFIX

pytestmark = pytest.mark.slow

TRANSCRIPT = "quero marcar uma consulta amanhã"
# WSM_MEDIA_MAX_BYTES's default: the product runs with it.
MAX_BYTES = 16 * 1024 * 1024


# --- real files, small -------------------------------------------------------------------
def png(width: int = 48, height: int = 32) -> bytes:
    """A real PNG (8-bit RGB, a green gradient): the browser decodes it, naturalWidth is
    its width."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(
        b"\x00"
        + b"".join(bytes((20, 80 + x * 150 // width, 60 + y * 150 // height)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packet: bytes, granule: int, sequence: int, flags: int) -> bytes:
    lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
    head = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, 0x77736D, sequence, 0, len(lacing))
    page = head + bytes(lacing) + packet
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def ogg_opus(seconds: float = 1.0) -> bytes:
    """A real voice note's container and codec (`audio/ogg; codecs=opus`, RFC 7845): OpusHead,
    OpusTags, then 20 ms frames of silence (TOC 0xF8: CELT fullband, mono, one frame)."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 8) + b"wsm-test" + struct.pack("<I", 0)
    out = _ogg_page(head, 0, 0, 0x02) + _ogg_page(tags, 0, 1, 0)
    frames = int(seconds / 0.02)
    for n in range(frames):
        last = n == frames - 1
        out += _ogg_page(b"\xf8\xff\xfe", 312 + 960 * (n + 1), n + 2, 0x04 if last else 0)
    return out


PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)


# --- seeding the history with the engine's functions ---------------------------------------
@dataclass
class Item:
    kind: str
    data: bytes | None = None  # None: the file never arrived (media null, with a reason)
    mimetype: str = ""
    filename: str | None = None
    caption: str | None = None
    transcript: str | None = None
    reason: str | None = None
    location: dict[str, Any] | None = None
    contact: dict[str, Any] | None = None


def in_thread(coroutine: Any) -> Any:
    # Playwright's sync API keeps an event loop in this thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def media_dir(product: Product) -> Path:
    # The parts run in the stack's home; WSM_MEDIA_DIR is relative to it by default.
    return product.stack.options.home / "var" / "media"


def stored_files(product: Product) -> list[Path]:
    root = media_dir(product)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def seed(product: Product, phone: str, items: list[Item]) -> None:
    """The customer's messages, as the worker writes them after fetching and storing a file:
    the media store's `save` (the file and its index), the history's `append_writes`."""

    async def run() -> None:
        settings = settings_for(KEY_PREFIX, product.stack.redis_url, media_dir=media_dir(product))
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            library = engine_parts.media_library(client, settings)
            chat = f"{phone}@c.us"
            token = conversation_token("default", chat)
            keys = engine_keys_for("default", chat, settings.queue_shards, KEY_PREFIX)
            history = HistoryKeys(keys.history, keys.history_meta)
            for item in items:
                mid = uuid.uuid4().hex[:20].upper()
                media = None
                if item.data is not None:
                    stored = await library.save(
                        token, item.data, item.mimetype, item.filename, message_id=mid
                    )
                    media = stored.public()
                entry = HistoryEntry(
                    mid=mid,
                    direction="in",
                    text=item.caption or "",
                    at=now_ms(),
                    author="customer",
                    kind=item.kind,
                    waha_id=f"false_{chat}_{mid}",
                    media=media,
                    media_reason=item.reason,
                    caption=item.caption,
                    transcript=item.transcript,
                    location=item.location,
                    contact=item.contact,
                )
                writes = append_writes(
                    history, entry, retention_seconds=settings.history_retention_seconds
                )
                await apply_writes(client, writes)
        finally:
            await client.aclose()

    in_thread(run())


def take_a_customer(product: Product, page: Any, agent: str = "ana", url: str | None = None) -> str:
    """The agent logs in (at `url`: the console's own address unless given), goes online and
    takes a new customer the menu brain handed over; the conversation's page is open."""
    phone = new_phone()
    login(page, url or product.url, agent)
    toggle = page.get_by_test_id("presence-toggle")
    if toggle.get_attribute("data-online") != "true":
        toggle.click()
        expect(page.get_by_test_id("presence-toggle")).to_have_attribute("data-online", "true")
    product.bring_to_line(phone)
    page.get_by_test_id("take-next").click()
    expect(page.get_by_test_id("conversation")).to_be_visible()
    assert phone in page.url
    return phone


def natural_width(image: Any) -> int:
    """Once the browser has loaded (or failed to load) the image: its decoded width."""
    image.scroll_into_view_if_needed()
    handle = image.element_handle()
    handle.owner_frame().wait_for_function("el => el.complete", arg=handle)
    width: int = handle.evaluate("el => el.naturalWidth")
    return width


def audio_duration(audio: Any) -> float:
    """The audio element's duration once its metadata loaded (-1 if it failed to load)."""
    duration: float = audio.evaluate(
        """el => new Promise(done => {
            if (el.error) return done(-1);
            if (el.readyState >= 1) return done(el.duration);
            el.addEventListener("loadedmetadata", () => done(el.duration));
            el.addEventListener("error", () => done(-1));
            el.load();
        })"""
    )
    return duration


def redis_state(product: Product) -> dict[bytes, Any]:
    """Everything a request could have changed in Redis (the console's snapshot)."""
    return snapshot(product.redis)


def sent_out(product: Product, phone: str) -> list[dict[str, Any]]:
    return [m for m in product.chat(phone) if m["direction"] == "out"]


# --- a conversation with media ------------------------------------------------------------
def test_media_in_a_conversation_shows_plays_and_downloads(product: Product, page: Any) -> None:
    phone = take_a_customer(product, page)
    image, voice = png(240, 135), ogg_opus(4.0)
    seed(
        product,
        phone,
        [
            Item("image", image, "image/png", None, "Comprovante do Pix"),
            Item("voice", voice, "audio/ogg; codecs=opus", transcript=TRANSCRIPT),
            Item("document", PDF, "application/pdf", "exame-sangue.pdf", "Meu exame"),
            Item("image", reason="not_downloaded"),
            Item(
                "location",
                location={"latitude": -23.5614, "longitude": -46.6559, "name": "Clínica Paulista"},
            ),
            Item(
                "contact",
                contact={"name": "Maria Souza", "phone": "+55 11 98765-0099", "vcard": "…"},
            ),
        ],
    )
    page.reload()
    messages = page.get_by_test_id("conversation")

    shown = messages.get_by_test_id("message-media-image")
    expect(shown).to_have_count(1)
    expect(shown).to_have_attribute("loading", "lazy")
    assert natural_width(shown) == 240  # the stored PNG's bytes reached the browser
    photo = messages.get_by_test_id("message").filter(
        has=page.get_by_test_id("message-media-image")
    )
    expect(photo).to_contain_text("Comprovante do Pix")

    audio = messages.get_by_test_id("message-media-audio")
    expect(audio).to_have_attribute("data-kind", "voice")
    assert audio_duration(audio) > 3.9  # the Ogg Opus file loaded and was understood
    note = messages.get_by_test_id("message").filter(has=page.get_by_test_id("message-media-audio"))
    expect(note.get_by_test_id("message-transcript")).to_have_text(f"Transcrição: {TRANSCRIPT}")

    document = messages.get_by_test_id("message-media-document")
    expect(document).to_contain_text("exame-sangue.pdf")
    expect(
        messages.get_by_test_id("message").filter(has=page.get_by_test_id("message-media-document"))
    ).to_contain_text(f"{len(PDF)} B")
    with page.expect_download() as download:
        document.click()
    assert download.value.suggested_filename == "exame-sangue.pdf"
    assert Path(download.value.path()).read_bytes() == PDF

    missing = messages.get_by_test_id("message-media-unavailable")
    expect(missing).to_have_count(1)
    expect(missing).to_contain_text("mídia indisponível")
    expect(missing).to_contain_text("o WAHA não baixou o arquivo")

    place = messages.get_by_test_id("message-location")
    expect(place).to_contain_text("Clínica Paulista")
    href = place.get_by_role("link").get_attribute("href") or ""
    assert href.startswith("https://www.openstreetmap.org/?mlat=-23.561400&mlon=-46.655900")

    card = messages.get_by_test_id("message-contact")
    expect(card).to_have_text("Contato: Maria Souza +55 11 98765-0099")

    page.set_viewport_size({"width": 1100, "height": 1000})
    messages.get_by_test_id("message-media-audio").scroll_into_view_if_needed()
    shot(page, "media")


# --- an agent sends a file ------------------------------------------------------------------
def test_an_agent_sends_an_image_from_the_conversation(product: Product, page: Any) -> None:
    phone = take_a_customer(product, page)
    photo = png(64, 40)
    page.get_by_test_id("media-upload-input").set_input_files(
        {"name": "tabela-precos.png", "mimeType": "image/png", "buffer": photo}
    )
    page.get_by_test_id("media-upload-caption").fill("Segue a tabela de preços")
    page.get_by_test_id("media-upload-submit").click()
    outcome = page.get_by_test_id("media-upload-sent")
    expect(outcome).to_be_visible(timeout=30_000)
    assert outcome.get_attribute("data-status") in ("sent", "queued")
    expect(page.get_by_test_id("media-upload-error")).to_have_count(0)

    # WAHA (the simulator, a Plus) received it once, with its caption.
    wait_until(
        lambda: any(m["text"] == "Segue a tabela de preços" for m in sent_out(product, phone)),
        timeout=20,
        what="the file at WAHA",
    )
    # The conversation shows it live, from the media store, as the customer got it.
    mine = (
        page.get_by_test_id("conversation")
        .get_by_test_id("message")
        .filter(has_text="Segue a tabela de preços")
    )
    expect(mine).to_have_count(1)
    expect(mine).to_have_attribute("data-author", "agent:ana")
    assert natural_width(mine.get_by_test_id("message-media-image")) == 64
    expect(mine.get_by_test_id("status")).to_have_attribute("data-status", "read")

    # The form is ready for the next file (a new nonce), and the same one sent again by a
    # double click would have sent it once.
    assert [m["text"] for m in sent_out(product, phone)].count("Segue a tabela de preços") == 1
    page.reload()
    expect(page.get_by_test_id("audit")).to_contain_text("enviou: [image] tabela-precos.png")

    # A type that may not be sent: refused in the form, nothing stored, nothing sent.
    product.settle()
    before, files, out = redis_state(product), stored_files(product), sent_out(product, phone)
    page.get_by_test_id("media-upload-input").set_input_files(
        {"name": "pagina.html", "mimeType": "text/html", "buffer": b"<script>alert(1)</script>"}
    )
    page.get_by_test_id("media-upload-submit").click()
    error = page.get_by_test_id("media-upload-error")
    expect(error).to_contain_text("Tipo de arquivo não aceito: text/html")
    assert redis_state(product) == before
    assert stored_files(product) == files
    assert sent_out(product, phone) == out


def test_refused_uploads_store_and_send_nothing(product: Product, page: Any) -> None:
    phone = take_a_customer(product, page, "bia")
    chat = f"{phone}@c.us"
    url = f"/c/default/{chat}/media"
    bia = http_login(product, "bia")
    ana = http_login(product, "ana")
    try:
        product.settle()
        before, files, out = (
            redis_state(product),
            stored_files(product),
            sent_out(product, phone),
        )
        token = page_csrf(bia)
        photo = {"file": ("foto.png", png(), "image/png")}

        # No CSRF token, or a wrong one: 403.
        assert bia.post(url, files=photo, data={"nonce": "n1"}).status_code == 403
        forged = bia.post(url, files=photo, data={"csrf": "forged", "nonce": "n1"})
        assert forged.status_code == 403
        # Ana, with her own valid token, on Bia's conversation: 403.
        refused = ana.post(url, files=photo, data={"csrf": page_csrf(ana), "nonce": "n2"})
        assert refused.status_code == 403

        def form_error(answer: httpx.Response) -> str:
            assert answer.status_code == 200, answer.text
            found = re.search(
                r'data-testid="media-upload-error" data-reason="([^"]+)"', answer.text
            )
            assert found, answer.text
            return found[1]

        headers = {"X-CSRF-Token": token}
        # No file; an empty one; a type that may not be sent; bytes that are not the type.
        assert form_error(bia.post(url, data={"caption": "x"}, files={"nada": ("", b"", "")},
                                   headers=headers)) == "no_file"  # fmt: skip
        empty = {"file": ("vazio.png", b"", "image/png")}
        assert form_error(bia.post(url, files=empty, headers=headers)) == "empty_file"
        html = {"file": ("a.html", b"<html></html>", "text/html")}
        assert form_error(bia.post(url, files=html, headers=headers)) == "unsupported_type"
        fake = {"file": ("foto.png", b"not a png at all", "image/png")}
        answer = bia.post(url, files=fake, headers=headers)
        assert form_error(answer) == "type_mismatch"
        assert "Tipo de arquivo não aceito: image/png" in answer.text
        # One byte above WSM_MEDIA_MAX_BYTES: read, refused.
        big = {"file": ("grande.pdf", b"%PDF-" + b"0" * (MAX_BYTES - 4), "application/pdf")}
        answer = bia.post(url, files=big, headers=headers)
        assert form_error(answer) == "file_too_large"
        assert "Arquivo grande demais (máximo 16,0 MB)" in answer.text
        # A body announcing far more: refused before it is read.
        assert form_error(announced_too_big(product, bia, url, token)) == "file_too_large"

        assert redis_state(product) == before
        assert stored_files(product) == files
        assert sent_out(product, phone) == out
    finally:
        bia.close()
        ana.close()


def test_a_file_nginx_refuses_is_explained_in_the_form(product: Product, page: Any) -> None:
    """Above nginx's own body limit (NGINX_CLIENT_MAX_BODY_SIZE, 17m: above
    WSM_MEDIA_MAX_BYTES) the console never sees the file: nginx answers 413 and htmx swaps
    nothing. The form says the file is too big all the same, as the console's own refusal
    does (found by an audit: it said nothing). Nothing is stored or sent."""
    require_program("nginx")
    if not product.stack.uses_nginx:
        pytest.skip("the stack runs without nginx")
    edge = product.stack.webhook_url.removesuffix("/webhook")
    phone = take_a_customer(product, page, url=edge)
    product.settle()
    before, files, out = redis_state(product), stored_files(product), sent_out(product, phone)
    big = b"%PDF-" + b"0" * (18 * 1024 * 1024)
    page.get_by_test_id("media-upload-input").set_input_files(
        {"name": "grande.pdf", "mimeType": "application/pdf", "buffer": big}
    )
    with page.expect_response(lambda r: r.url.endswith("/media")) as answered:
        page.get_by_test_id("media-upload-submit").click()
    assert answered.value.status == 413
    error = page.get_by_test_id("media-upload-error")
    expect(error).to_have_attribute("data-reason", "file_too_large")
    expect(error).to_have_text("Arquivo grande demais (máximo 16,0 MB).")
    assert redis_state(product) == before
    assert stored_files(product) == files
    assert sent_out(product, phone) == out


def announced_too_big(
    product: Product, client: httpx.Client, path: str, csrf: str
) -> httpx.Response:
    """A request whose Content-Length announces a 1 GB body, none of it sent: the answer must
    come without the body being read."""
    where = urlsplit(product.url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Cookie", "; ".join(f"{k}={v}" for k, v in client.cookies.items()))
        connection.putheader("X-CSRF-Token", csrf)
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        answer = connection.getresponse()
        return httpx.Response(answer.status, content=answer.read())
    finally:
        connection.close()


# --- WAHA Core --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def core_product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    """The product with a WAHA Core (the simulator with --tier CORE): files are refused with
    422 AvailableInPlusVersion."""
    with console_product(
        tmp_path_factory.mktemp("console-core"),
        [("ana", "Ana", "agent")],
        concurrency=2,
        sim_args=("--tier", "CORE"),
    ) as view:
        yield view


def test_a_waha_core_is_shown_as_not_sending_files(core_product: Product, page: Any) -> None:
    product = core_product
    phone = take_a_customer(product, page)
    upload = page.get_by_test_id("media-upload-input")
    upload.set_input_files({"name": "recibo.png", "mimeType": "image/png", "buffer": png()})
    page.get_by_test_id("media-upload-caption").fill("Seu recibo")
    page.get_by_test_id("media-upload-submit").click()
    error = page.get_by_test_id("media-upload-error")
    expect(error).to_have_attribute("data-reason", "waha_plus_required", timeout=30_000)
    expect(error).to_have_text("Este WAHA não envia arquivos (recurso do WAHA Plus).")
    assert not [m for m in sent_out(product, phone) if m["text"] == "Seu recibo"]
    # WAHA said so only when asked to send it: that first file stays in the conversation's
    # history as not sent (docs/console.md).
    first = (
        page.get_by_test_id("conversation").get_by_test_id("message").filter(has_text="Seu recibo")
    )
    expect(first.get_by_test_id("status")).to_have_attribute("data-status", "failed")

    # The refusal is remembered: the next file is refused at once, nothing stored or queued.
    product.settle()
    before, files = redis_state(product), stored_files(product)
    page.get_by_test_id("media-upload-input").set_input_files(
        {"name": "outro.pdf", "mimeType": "application/pdf", "buffer": PDF}
    )
    with page.expect_response(lambda r: r.url.endswith("/media")) as answered:
        page.get_by_test_id("media-upload-submit").click()
    assert answered.value.status == 200
    expect(page.get_by_test_id("media-upload-error")).to_have_text(
        "Este WAHA não envia arquivos (recurso do WAHA Plus)."
    )
    assert redis_state(product) == before
    assert stored_files(product) == files
    assert not [m for m in sent_out(product, phone) if m["text"] == "Seu recibo"]
