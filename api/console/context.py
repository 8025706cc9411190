"""Everything the console's routers share, built once by `install`, plus the two dependencies
every route starts with: who is logged in, and (for what changes anything) the CSRF check."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from fastapi import Request

from engine.assignment import LineCoordinator
from engine.commands import CommandQueue
from shared.keys import ConsoleKeys
from shared.redis_client import RedisClient
from shared.settings import Settings

from .accounts import AccountStore
from .audit import Audit
from .canned import CannedReplies
from .live import Hub, Watcher
from .sessions import LoginRequired, Sessions, Viewer, require_csrf
from .ui import Ui
from .views import Reads


@dataclass
class Console:
    redis: RedisClient
    settings: Settings
    coordinator: LineCoordinator
    queue: CommandQueue
    keys: ConsoleKeys
    accounts: AccountStore
    sessions: Sessions
    reads: Reads
    audit: Audit
    canned: CannedReplies
    ui: Ui
    hub: Hub
    watcher: Watcher
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Per set of lines shown (Reads.line_teams), (event id, fragment): the line as the last
    # line event showed it, shared by all pages that show the same lines.
    line_cache: dict[tuple[str, ...] | None, tuple[str, str]] = field(default_factory=dict)

    def start(self) -> None:
        """The watcher and the hub start with the first console request (the app has no
        start-up hook of ours; api/app.py stays the API's)."""
        if self.watcher.stopped or (self.tasks and not all(t.done() for t in self.tasks)):
            return
        self.tasks = [
            asyncio.get_running_loop().create_task(self.watcher.run(), name="console-watcher"),
            asyncio.get_running_loop().create_task(self.hub.run(), name="console-hub"),
        ]

    async def stop(self) -> None:
        self.watcher.stopped = self.hub.stopped = True
        pending = {task for task in self.tasks if not task.done()}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1)
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        self.tasks = []

    async def viewer(self, request: Request) -> Viewer:
        self.start()
        viewer = await self.sessions.viewer(request)
        if viewer is None:
            raise LoginRequired()
        return viewer

    async def acting(self, request: Request) -> Viewer:
        """The viewer of a state-changing request, after its CSRF token was checked."""
        viewer = await self.viewer(request)
        await require_csrf(request, viewer)
        return viewer
