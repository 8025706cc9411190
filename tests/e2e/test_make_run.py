"""`make run` as a user runs it: start the whole product, chat as a customer, get the menu back,
press Ctrl-C: everything stops cleanly and no process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.embedded_redis import free_port
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (a path or port unique to this test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_make_run_answers_a_customer_and_stops_clean(tmp_path: Path) -> None:
    home = tmp_path / "dev"
    ports = {name: free_port() for name in ("gateway", "api", "waha", "metrics")}
    env = {
        k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "WAHA_URL", "GROQ_API_KEY"}
    }
    env["WSM_TYPING_DELAY_MAX_MS"] = "0"
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsm",
            "dev",
            "--home",
            str(home),
            "--gateway-port",
            str(ports["gateway"]),
            "--api-port",
            str(ports["api"]),
            "--waha-port",
            str(ports["waha"]),
            "--worker-metrics-port",
            str(ports["metrics"]),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner: list[str] = []

        def ready() -> bool:
            assert dev.stdout is not None
            line = dev.stdout.readline()
            banner.append(line)
            assert dev.poll() is None, "".join(banner)
            return "Ctrl-C stops everything" in line

        wait_until(ready, timeout=60, what="wsm dev to start")
        chat = subprocess.run(
            [
                sys.executable,
                "-m",
                "wsm",
                "chat",
                "--as",
                "5511987650001",
                "--sim",
                f"http://127.0.0.1:{ports['waha']}",
                "--timeout",
                "30",
            ],
            input="oi\nMaria\n",
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert chat.returncode == 0, chat.stdout + chat.stderr
        # The bot asks for a name, then shows the menu, whose last option is a person.
        assert "atendente" in chat.stdout.lower(), chat.stdout
    finally:
        dev.send_signal(signal.SIGINT)
        rest, _ = dev.communicate(timeout=90)
    assert dev.returncode == 0, "".join(banner) + rest
    assert "stopped" in rest
    leftovers = processes_mentioning(str(home)) + processes_mentioning(f" {ports['gateway']}")
    leftovers += processes_mentioning(f" {ports['metrics']}")
    assert leftovers == [], f"orphan processes: {leftovers}"
