"""Several businesses, one per WhatsApp (WAHA) session.

A business is what a business file says (engine/agent/calendar.py): name, description, hours,
services, teams, texts (the engine's and the agent's), and whether the AI agent answers
(`business.agent`).
WSM_BUSINESS_FILES maps sessions to their own files (`session=path,...`); every other session
is the default business: WSM_CALENDAR_FILE, or WSM_BUSINESS_NAME / WSM_MENU_SERVICES without
one. Built once per process from Settings; nothing here talks to Redis.

Each business's slots are its own (CalendarKeys.business): the default business keeps the keys
it always had, so a one-business deployment changes nothing. A business's id is its file's name
without the extension ("loja" for /etc/wsm/loja.yaml); two sessions naming the same file share
one business (and its slots).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.agent.calendar import Calendar, CalendarFileError, default_calendar, load_calendar
from engine.agent.texts import AgentTextsError, load_agent_texts
from engine.brain import Brain, Decision, Turn, reads_history
from engine.identity import Conversation
from engine.texts import TextsFileError, load_texts
from shared.settings import Settings

_ID_UNSAFE = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Business:
    id: str  # "" for the default business (its keys are the one-business keys)
    calendar: Calendar
    # Its business file (None: the default business built from settings): its knowledge
    # folder is found beside it (engine/agent/knowledge.py).
    file: Path | None = None


class Businesses:
    def __init__(self, default: Business, by_session: Mapping[str, Business]) -> None:
        self.default = default
        self.by_session = dict(by_session)

    def for_session(self, session: str) -> Business:
        """The session's business; the default one for a session without its own file."""
        return self.by_session.get(session, self.default)

    def all(self) -> list[Business]:
        """Every business once, the default first."""
        unique = {self.default.id: self.default}
        for business in self.by_session.values():
            unique.setdefault(business.id, business)
        return list(unique.values())


def calendar_from(settings: Settings) -> Calendar:
    """The default business: WSM_CALENDAR_FILE, or WSM_BUSINESS_NAME / WSM_MENU_SERVICES."""
    if settings.calendar_file is not None:
        return load_calendar(settings.calendar_file)
    return default_calendar(settings.business_name, settings.menu_service_names)


def business_id(path: Path) -> str:
    return _ID_UNSAFE.sub("-", path.stem.casefold()).strip("-") or "business"


def businesses_from(settings: Settings, *, default: Calendar | None = None) -> Businesses:
    """The process's businesses (CalendarFileError names a bad file: refused at start)."""
    default_business = Business("", default or calendar_from(settings), settings.calendar_file)
    default_path = settings.calendar_file.resolve() if settings.calendar_file else None
    loaded: dict[Path, Business] = {}
    by_session: dict[str, Business] = {}
    for session, path in settings.business_file_map.items():
        resolved = path.resolve()
        if resolved == default_path:
            by_session[session] = default_business
            continue
        if resolved not in loaded:
            ident = business_id(path)
            if any(b.id == ident for b in loaded.values()):
                # Their slots would be one: refuse rather than let them take each other's.
                raise CalendarFileError(
                    f"WSM_BUSINESS_FILES: two business files are named {path.stem!r}; "
                    "rename one (a business's id is its file's name)"
                )
            loaded[resolved] = Business(ident, load_calendar(path), path)
        by_session[session] = loaded[resolved]
    return Businesses(default_business, by_session)


def business_files_usable(settings: Settings, program: str) -> bool:
    """Whether the business files are usable; when not, tells stderr why, as `program`. The
    commands that read them (`wsm worker`, `wsm api`, `wsm dev`, `wsm agent`) call it first
    and exit 2 on False, before they start anything."""
    problem = business_files_problem(settings)
    if problem is not None:
        print(f"{program}: {problem}", file=sys.stderr)
    return problem is None


def business_files_problem(settings: Settings) -> str | None:
    """What makes the business files (WSM_CALENDAR_FILE, WSM_BUSINESS_FILES) unusable, naming
    the file and the field, read as the worker and the API read them (hours, teams, texts);
    None when nothing does. `wsm worker`, `wsm api` and `wsm dev` refuse to start on it (exit
    2) before they start anything: a worker would otherwise fail at every restart, and an
    API at its first request."""
    try:
        businesses = businesses_from(settings)
        base = load_texts(settings.language, settings.texts_file)
    except (CalendarFileError, TextsFileError) as exc:
        return str(exc)
    for business in businesses.all():
        try:
            base.with_business(business.calendar.texts)
            load_agent_texts(settings.language, business.calendar.texts)
        except (TextsFileError, AgentTextsError) as exc:
            return f"{business.file}: {exc}" if business.file else str(exc)
    return None


class SessionBrain:
    """The engine's one brain over several businesses: each turn goes to the brain of its
    session's business (the default business's for any other session)."""

    def __init__(self, default: Brain, by_business: Mapping[str, Brain], businesses: Businesses):
        self.default = default
        self.by_business = dict(by_business)
        self.businesses = businesses

    def brain_for(self, session: str) -> Brain:
        business = self.businesses.for_session(session)
        return self.by_business.get(business.id, self.default)

    def reads_history(self, conversation: Conversation) -> bool:
        return reads_history(self.brain_for(conversation.session), conversation)

    async def decide(self, turn: Turn) -> Decision:
        return await self.brain_for(turn.conversation.session).decide(turn)
