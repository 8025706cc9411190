"""Rendering: the Jinja2 templates of api/console/templates, and the fragments the pages and the
live channel share (a page and its live updates come from the same template, so they agree)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.media_send import ALLOWED

from .i18n import translator, waited

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _clock(ms: int) -> str:
    # The browser rewrites it in its own time zone (console.js); this is the no-script text.
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%d/%m %H:%M UTC")


def _author(author: str) -> str:
    return author.split(":", 1)[0] if author else ""


def _get(item: Any, name: str) -> Any:
    # History items carry `media` and `location` as mappings (decoded JSON) or dataclasses.
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def conv_url(session: str, chat_id: str) -> str:
    """A conversation's page, the one place the console builds it (pages, redirects, the live
    channel's fragments, every template's links): both ids are data, each percent-encoded as
    one path segment (a `/`, `?` or `#` in one cannot change the path)."""
    return f"/c/{quote(session, safe='')}/{quote(chat_id, safe='@')}"


def media_url(media: Any) -> str:
    """Where the browser fetches a stored file: the API's media route, which also takes the
    console's session (one route serves the API and the console, with one access rule)."""
    return f"/api/media/{quote(str(_get(media, 'id') or ''), safe='')}"


def map_url(location: Any) -> str:
    """OpenStreetMap at the point (a link: the console loads nothing from outside)."""
    lat, lon = float(_get(location, "latitude")), float(_get(location, "longitude"))
    return (
        f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}#map=17/{lat:.6f}/{lon:.6f}"
    )


def file_size(size: Any, language: str = "pt-BR") -> str:
    """A file size as people read it: 830 B, 12,4 KB, 3,1 MB (pt-BR's decimal comma)."""
    try:
        value = float(size)
    except (TypeError, ValueError):
        return ""
    for unit in ("B", "KB", "MB"):
        if value < 1024 or unit == "MB":
            text = f"{value:.0f}" if unit == "B" else f"{value:.1f}"
            return f"{text.replace('.', ',') if language == 'pt-BR' else text} {unit}"
        value /= 1024
    return ""


class Ui:
    def __init__(self, language: str, media_max_bytes: int) -> None:
        self.language = language
        self.t = translator(language)
        # What a file above WSM_MEDIA_MAX_BYTES is told: by the console's own refusal, and by
        # the upload form's script when nginx refuses the body first (its limit is above ours).
        self.upload_too_big = str(
            self.t("media.upload.too_big", limit=file_size(media_max_bytes, language))
        )
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            t=self.t,
            waited=waited,
            iso=_iso,
            clock=_clock,
            author_kind=_author,
            conv_url=conv_url,
            media_url=media_url,
            map_url=map_url,
            file_size=lambda size: file_size(size, language),
            media_reason=self.media_reason,
            # What the upload form's file chooser offers: the types send_media accepts.
            upload_accept=",".join(ALLOWED),
            upload_too_big=self.upload_too_big,
            lang="pt-BR" if language == "pt-BR" else "en",
        )

    def media_reason(self, code: str) -> str:
        """Why a file is missing, in the attendant's words when the console knows the code."""
        if code.startswith("http_"):  # the fetch's `http_<status>` (engine/media/fetch.py)
            return str(self.t("media.reason.http", status=code[5:]))
        text = str(self.t(f"media.reason.{code}"))
        return code if text == f"media.reason.{code}" else text

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    @staticmethod
    def nonce() -> str:
        """A form's one-time id: the command it queues is named after it, so a form sent
        twice (a double click, a retried request) queues its command once."""
        return secrets.token_urlsafe(16)
