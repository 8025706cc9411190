"""`wsm chat` as a user runs it, against `wsm waha-sim` as a real process (no wsm behind it:
the bot's answers are the simulator's sendText, as wsm calls it). Found by an audit: Ctrl-C
waited for Enter, every start printed the chat's old answers again, a refused line or a number
without digits ended in a traceback, and a Windows line ending was sent along."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
PHONE = "5511987650077"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[str]:
    """The simulator's base URL; it sends no webhooks (nothing listens behind it)."""
    log = tmp_path / "sim.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "wsm", "waha-sim", "--port", "0", "--no-announce"],
            cwd=tmp_path, env=ENV, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        found = wait_until(
            lambda: re.search(r"listening on (http://\S+)", log.read_text()),
            timeout=20,
            what="waha-sim to listen",
        )
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def chat(sim: str, *args: str, stdin: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsm", "chat", "--sim", sim, "--timeout", "0.5", *args],
        input=stdin, env=ENV, capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def text(done: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return done.stdout.decode(), done.stderr.decode()  # type: ignore[union-attr]


def inbound(sim: str) -> list[str]:
    messages = httpx.get(f"{sim}/_sim/chats/{PHONE}@c.us/messages").json()["messages"]
    return [m["text"] for m in messages if m["direction"] == "in"]


def test_a_new_chat_does_not_print_old_answers_again(sim: str) -> None:
    sent = httpx.post(f"{sim}/api/sendText", json={"chatId": f"{PHONE}@c.us", "text": "antiga"})
    assert sent.status_code == 201
    done = chat(sim, "--as", PHONE, stdin=b"")
    out, err = text(done)
    assert done.returncode == 0, err
    assert "antiga" not in out
    # What comes after the start is shown.
    done = chat(sim, "--as", PHONE, stdin=b"oi\r\n")
    out, _ = text(done)
    assert "você: oi" in out and "antiga" not in out
    assert inbound(sim) == ["oi"]  # the Windows line ending stayed behind


def test_a_refused_line_or_a_number_without_digits_is_told_plainly(sim: str) -> None:
    done = chat(sim, "--as", PHONE, "--session", "nosuchsession", stdin=b"oi\n")
    out, err = text(done)
    assert done.returncode == 4, out + err
    assert "wsm chat: not sent:" in err and "Traceback" not in err
    done = chat(sim, "--as", "abc", stdin=b"oi\n")
    out, err = text(done)
    assert done.returncode == 2 and "--as 'abc'" in err and "Traceback" not in err
    # Bytes that are not UTF-8 are replaced, not a crash.
    done = chat(sim, "--as", PHONE, stdin=b"ol\xe1\n")
    assert done.returncode in (0, 3), text(done)
    assert inbound(sim) == ["ol\ufffd"]


def own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty on stdin, so
    that ^C typed there is a SIGINT, as in a user's terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_ctrl_c_ends_an_interactive_chat_at_once(sim: str) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "wsm", "chat", "--sim", sim, "--as", PHONE],
        stdin=follower, stdout=follower, stderr=follower, env=ENV, preexec_fn=own_terminal,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"Ctrl-D" not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)
        assert b"Ctrl-D" in seen, seen
        os.write(leader, b"\x03")  # the terminal turns it into SIGINT for the chat
        # Without Enter. (Before the fix it waited for a line forever.)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
