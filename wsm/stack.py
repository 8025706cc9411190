"""The product's parts as real child processes: started in order, watched, always stopped.

Used by `wsm dev` and `wsm loadtest`. Each part runs in a session (and process group) of its
own, so a Ctrl-C in the terminal reaches only the parent, which then stops the parts in the
order that loses nothing (see `Stack.stop_all`). Each part is also told by Linux to stop when
its parent dies (PR_SET_PDEATHSIG), so even a parent that is SIGKILLed leaves no orphan
running; and once a part's leader has exited, whatever is left in its process group (a child it
started) is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from shared.parent_death import signal_on_parent_death


class ServiceFailed(RuntimeError):
    """A part exited on its own, or did not become ready in time (terminal for a run)."""


class StopRequested(Exception):
    """SIGTERM reached the parent: stop everything, as Ctrl-C would."""


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wiring(
    redis_url: str, hmac_key: str, waha_url: str, api_token: str, home: Path
) -> dict[str, str]:
    """The settings every part of a stack shares: where Redis and WAHA are, the webhooks'
    HMAC key, the operator API's token, and the gateway's spool under the stack's `home`."""
    return {
        "REDIS_URL": redis_url,
        "WEBHOOK_HMAC_KEY": hmac_key,
        "WAHA_URL": waha_url,
        "WSM_API_TOKEN": api_token,
        "WSM_SPOOL_DIR": str(home / "spool"),
    }


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Service:
    """One part: a command, its environment, its log file, and how to know it is ready."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    # SIGTERM lets every part of wsm finish what it holds; nginx stops gracefully on SIGQUIT.
    stop_signal: int = signal.SIGTERM
    # The worker fleet may take its WSM_SHUTDOWN_GRACE_SECONDS (30 s) plus its own margin.
    grace_seconds: float = 45.0
    cwd: Path | None = None
    # Variables of the parent's environment the part must not inherit.
    drop_env: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Spawn (returns at once; see wait_ready). Call from the main thread only."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env={
                    **{k: v for k, v in os.environ.items() if k not in self.drop_env},
                    **self.env,
                },
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # In the child, before exec: SIGTERM when this parent dies. Only a prctl call
                # between fork and exec: no lock is taken there.
                preexec_fn=signal_on_parent_death,
            )

    def log_tail(self, size: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(max(0, self.log_path.stat().st_size - size))
            return log.read().decode(errors="replace")

    def check(self) -> None:
        """Raise ServiceFailed when the part has exited (it is never meant to, on its own)."""
        if self.process is not None and self.process.poll() is not None:
            raise ServiceFailed(
                f"{self.name} exited with {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def is_ready(self) -> bool:
        self.check()
        return self.ready is None or self.ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{self.name} was not ready after {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float | None = None) -> int | None:
        """Ask it to stop, wait up to `grace`, then SIGKILL its whole process group."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(self.stop_signal)
            try:
                process.wait(self.grace_seconds if grace is None else grace)
            except subprocess.TimeoutExpired:
                self._kill_group(process.pid)
                process.wait()
        # Anything it started and left behind (it shares the group) goes too.
        self._kill_group(process.pid)
        self.process = None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the part and everything in its process group, as a crash would."""
        process = self.process
        if process is None:
            return
        self._kill_group(process.pid)
        process.wait()
        self.process = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


@dataclass
class Stack:
    """Parts started in the order given; stopped with `stop_all` in the order given there."""

    services: list[Service] = field(default_factory=list)

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def get(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def start(self, service: Service, timeout: float = 30.0) -> None:
        """Start one part and wait until it is ready, while the others stay up."""
        if service not in self.services:
            self.add(service)
        service.start()
        deadline = time.monotonic() + timeout
        while not service.is_ready():
            self.check()
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{service.name} was not ready after {timeout:.0f} s; "
                    f"last lines of {service.log_path}:\n{service.log_tail()}"
                )
            time.sleep(0.05)

    def check(self, *, skip: Sequence[str] = ()) -> None:
        for service in self.services:
            if service.name not in skip:
                service.check()

    def stop_all(self, order: Sequence[str] | None = None) -> dict[str, int | None]:
        """Stop every part: those named in `order` first, in that order, then the rest in
        reverse start order. Never raises for one part: every part gets its stop."""
        named = [self.get(name) for name in order or () if any(s.name == name for s in self)]
        rest = [s for s in reversed(self.services) if s not in named]
        codes: dict[str, int | None] = {}
        for service in [*named, *rest]:
            try:
                codes[service.name] = service.stop()
            except Exception as exc:  # a failed stop must not spare the parts after it
                print(f"stopping {service.name} failed: {exc}", file=sys.stderr, flush=True)
                service.kill()
                codes[service.name] = None
        return codes

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested


@contextlib.contextmanager
def running(stack: Stack, stop_order: Sequence[str] = ()) -> Iterator[Stack]:
    """Inside, SIGTERM raises StopRequested (as Ctrl-C raises KeyboardInterrupt). On the way
    out, whatever the reason, every part is stopped (`Stack.stop_all(stop_order)`) with both
    signals ignored, so a second Ctrl-C cannot leave the stopping half done."""
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        yield stack
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop_all(stop_order)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


def redis_answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


def redis_service(data_dir: Path, *, port: int, log_path: Path) -> Service:
    """A private redis-server (append-only, fsync on every write: see EmbeddedRedis) as a part
    that can be killed and started again on the same port with the same data."""
    from shared.embedded_redis import EmbeddedRedis

    data_dir.mkdir(parents=True, exist_ok=True)
    command = EmbeddedRedis(data_dir, port=port, appendonly=True).command()
    return Service(
        "redis", command, log_path, ready=lambda: redis_answers(port), grace_seconds=20.0
    )
