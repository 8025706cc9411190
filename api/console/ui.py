"""Rendering: the Jinja2 templates of api/console/templates, and the fragments the pages and the
live channel share (a page and its live updates come from the same template, so they agree)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

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


class Ui:
    def __init__(self, language: str) -> None:
        self.language = language
        self.t = translator(language)
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
            lang="pt-BR" if language == "pt-BR" else "en",
        )

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    @staticmethod
    def nonce() -> str:
        """A form's one-time id: the command it queues is named after it, so a form sent
        twice (a double click, a retried request) queues its command once."""
        return secrets.token_urlsafe(16)
