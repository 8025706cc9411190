"""`wsm dev` on private ports: its parts are `wsm.stack` services, so they stop in order on
SIGTERM (Redis last, by SIGTERM), a part that exits stops the rest, and even a `wsm dev` that is
SIGKILLed leaves no process behind (Linux tells each part its parent died). README's own run
(`make run` on the default ports, Ctrl-C) is tests/e2e/test_make_run.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.embedded_redis import free_port
from shared.settings import Settings
from tests.support.orphans import kill_and_wait_for_the_parts
from tests.support.polling import wait_until
from wsm.dev import build_parts, busy_ports, parse_args

ROOT = Path(__file__).resolve().parents[2]


def processes_of(home: Path) -> list[int]:
    """PIDs whose command line or environment names `home` (Redis's --dir, every other part's
    WSM_SPOOL_DIR, inherited by the worker fleet's processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if os.fsencode(home) in seen:
            found.append(int(entry.name))
    return found


def start_dev(home: Path) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSM_", "REDIS_", "WAHA_", "GROQ_")) and k != "WEBHOOK_HMAC_KEY"
    }
    return subprocess.Popen(
        [sys.executable, "-m", "wsm", "dev", "--home", str(home), "--processes", "1",
         "--gateway-port", str(free_port()), "--api-port", str(free_port()),
         "--waha-port", str(free_port()), "--worker-metrics-port", str(free_port())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_banner(dev: subprocess.Popen[str]) -> str:
    seen: list[str] = []

    def ready() -> bool:
        assert dev.stdout is not None
        line = dev.stdout.readline()
        seen.append(line)
        assert dev.poll() is None or line, "".join(seen)
        return "Ctrl-C stops everything" in line

    wait_until(ready, timeout=120, what="wsm dev's banner")
    return "".join(seen)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "dev"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["terminated", "killed", "a part exits"])
def test_wsm_dev_leaves_no_process_behind(home: Path, how: str) -> None:
    dev = start_dev(home)
    try:
        banner = wait_for_banner(dev)
        assert "(private)" in banner and "logs in" in banner, banner
        # Redis, the simulator, the gateway, the fleet's supervisor and its process, the API.
        assert len(processes_of(home)) >= 6, banner
        if how == "killed":
            kill_and_wait_for_the_parts(dev, lambda: processes_of(home))
            return
        if how == "terminated":
            dev.send_signal(signal.SIGTERM)
        else:
            # `python -m wsm gateway ...` (not `wsm dev`, whose own flags name the gateway).
            gateway = [p for p in processes_of(home) if b"\0wsm\0gateway\0" in cmdline(p)]
            assert gateway, banner
            os.kill(gateway[0], signal.SIGKILL)
        rest, _ = dev.communicate(timeout=120)
        said = banner + rest
        assert "wsm dev: stopped" in said and "Traceback" not in said, said
        if how == "terminated":
            assert dev.returncode == 0 and "wsm dev: stopping" in said, said
        else:
            assert dev.returncode == 1 and "gateway exited with" in said, said
        assert processes_of(home) == []
        # Redis was stopped by `wsm dev` with SIGTERM (it flushed its append-only file).
        assert "Received SIGTERM" in (home / "redis" / "redis.log").read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        for pid in processes_of(home):  # never leave them running, even when the test fails
            os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- what `wsm dev` starts, from its settings (found by an audit) ---------------------------


def parts_for(tmp_path: Path, dotenv: str, *argv: str) -> dict[str, Any]:
    """`wsm dev`'s parts for a `.env` holding `dotenv` and these flags: name -> service."""
    env_file = tmp_path / ".env"
    env_file.write_text(dotenv, "utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WSM_", "WAHA_"))}
    with pytest.MonkeyPatch.context() as patch:
        for name in set(os.environ) - set(clean):
            patch.delenv(name)
        settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    args = parse_args(["--home", str(tmp_path / "dev"), *argv])
    return {service.name: service for service, _ in build_parts(args, settings, "redis://x:1/0")}


def test_a_real_waha_named_in_dotenv_is_used_instead_of_the_simulator(tmp_path: Path) -> None:
    parts = parts_for(tmp_path, "WAHA_URL=http://waha.internal:3000\n")
    assert "waha-sim" not in parts
    assert parts["worker"].env["WAHA_URL"] == "http://waha.internal:3000"
    # Without it, the simulator, on --waha-port.
    parts = parts_for(tmp_path, "", "--waha-port", "3999")
    assert "waha-sim" in parts and parts["worker"].env["WAHA_URL"] == "http://127.0.0.1:3999"


def test_the_workers_metrics_listen_where_everything_else_does(tmp_path: Path) -> None:
    parts = parts_for(tmp_path, "", "--host", "127.0.0.1")
    assert parts["worker"].env["WSM_WORKER_METRICS_HOST"] == "127.0.0.1"


def test_worker_metrics_port_0_is_refused_at_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wsm", "dev", "--home", str(tmp_path), "--worker-metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--worker-metrics-port" in done.stderr
    assert not (tmp_path / "redis").exists()  # nothing started


def settings_with(tmp_path: Path, dotenv: str) -> Settings:
    """The settings `wsm dev` reads from a `.env` holding `dotenv` (no WSM_/WAHA_ variable of
    this test's own environment)."""
    env_file = tmp_path / ".env"
    env_file.write_text(dotenv, "utf-8")
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(("WSM_", "WAHA_"))]:
            patch.delenv(name)
        return Settings(_env_file=env_file)  # type: ignore[call-arg]


def test_a_real_waha_named_in_dotenv_may_hold_the_simulators_port(tmp_path: Path) -> None:
    """README: WAHA_URL works in the environment or in `.env`. A real WAHA on the simulator's
    port (its default 3000) is then no conflict; without WAHA_URL it is (found by an audit:
    only the environment's WAHA_URL was looked at, so `make run` refused to start)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = [str(free_port()) for _ in range(3)]
        args = parse_args([
            "--home", str(tmp_path / "dev"), "--waha-port", str(port), "--gateway-port", free[0],
            "--worker-metrics-port", free[1], "--api-port", free[2],
        ])  # fmt: skip
        real = settings_with(tmp_path, f"WAHA_URL=http://127.0.0.1:{port}\n")
        assert busy_ports(args, real) == []
        assert busy_ports(args, settings_with(tmp_path, "")) == [f"{port} (waha-sim)"]


def test_the_banner_names_where_the_api_token_is(tmp_path: Path) -> None:
    """The token file is written only when no WSM_API_TOKEN is set: with one, the banner names
    the setting, not a file that is not there (found by an audit)."""
    args = parse_args(["--home", str(tmp_path / "dev")])
    given = "t" * 40
    shown = dict(
        (service.name, text)
        for service, text in build_parts(
            args, settings_with(tmp_path, f"WSM_API_TOKEN={given}\n"), "redis://x:1/0"
        )
    )
    assert "(token WSM_API_TOKEN)" in shown["api"]
    assert not (tmp_path / "dev" / "api-token").exists()
    shown = dict(
        (service.name, text)
        for service, text in build_parts(args, settings_with(tmp_path, ""), "redis://x:1/0")
    )
    assert f"(token in {tmp_path / 'dev' / 'api-token'})" in shown["api"]
    assert (tmp_path / "dev" / "api-token").exists()
