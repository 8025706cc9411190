"""`wsm waha-sim` as a real process: it says where it listens, serves, and stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.polling import wait_until

REPO = Path(__file__).resolve().parents[3]


def test_the_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsm",
                "waha-sim",
                "--port",
                "0",
                "--api-key",
                "k",
                "--no-announce",
                "--events",
                "message,session.status",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        line = wait_until(
            lambda: re.search(r"listening on (http://\S+)", log.read_text()),
            timeout=20,
            what="waha-sim to listen",
        )
        assert line is not None
        base = line.group(1)
        response = httpx.post(
            f"{base}/api/sendText",
            json={"chatId": "5511987650052", "text": "oi"},
            headers={"X-Api-Key": "k"},
        )
        assert response.status_code == 201
        assert httpx.get(f"{base}/_sim/health").json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_help_lists_the_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsm", "waha-sim", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    for flag in ("--webhook-url", "--hmac-key", "--retries-policy", "--session-wait"):
        assert flag in result.stdout
