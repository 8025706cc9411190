"""Tests written to kill mutants that survived the mutation runs (docs/testing.md lists each one
and the mutant it kills): `wsm gateway`'s launch (flags over settings, uvicorn's options, the
refusals' exit status), the app's lifespan, and the cleanup of dead processes' metric files.

`main()` runs in-process with uvicorn.run replaced by a recorder: a real process per option
would cost seconds each, and uvicorn does not say which options it was given. The refusals
that need a real process (no HMAC key) are in test_process.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from gateway import cli, metrics
from shared.embedded_redis import free_port
from shared.metrics_setup import ENV_VAR
from shared.redis_client import UnsupportedRedis, connect
from tests.gateway.conftest import HMAC_KEY, queued_events, steady_settings
from tests.support.asgi import running_lifespan
from tests.support.polling import async_wait_until
from tests.support.waha import compact, text_message

# --- gateway/cli.py: `wsm gateway` in-process, uvicorn.run recorded -------------------------


@dataclass
class Launch:
    """What one `main(argv)` did: its exit status and every uvicorn.run call it made."""

    status: int
    runs: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def launch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, key_prefix: str
) -> Callable[..., Launch]:
    """`main(argv)` with the suite's Redis and the given environment; uvicorn.run recorded,
    logging and metrics setup left alone (both change the whole test process)."""
    monkeypatch.chdir(tmp_path)  # no .env file
    for name in list(os.environ):
        if name.startswith(("WSM_", "WEBHOOK_", "REDIS_URL", "PROMETHEUS_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    monkeypatch.setattr(cli, "enable_multiprocess_metrics", lambda directory: directory)

    def run(argv: list[str], **environment: str) -> Launch:
        base = {
            "REDIS_URL": redis_url,
            "WSM_KEY_PREFIX": key_prefix,
            "WEBHOOK_HMAC_KEY": HMAC_KEY,
            "WSM_SPOOL_DIR": str(tmp_path / "spool"),
        }
        for name, value in (base | environment).items():
            monkeypatch.setenv(name, value)
        runs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: runs.append((a, kw)))
        return Launch(cli.main(argv), runs)

    return run


SETTINGS_ADDRESS = {
    "WSM_GATEWAY_HOST": "127.0.0.3",
    "WSM_GATEWAY_PORT": "18082",
    "WSM_GATEWAY_WORKERS": "3",
}


@pytest.mark.parametrize(
    ("argv", "host", "port", "workers"),
    [
        (["--host", "127.0.0.2", "--port", "18081", "--workers", "2"], "127.0.0.2", 18081, 2),
        ([], "127.0.0.3", 18082, 3),
    ],
    ids=["flags", "settings"],
)
def test_wsm_gateway_serves_with_its_flags_over_the_settings_and_its_uvicorn_options(
    launch: Callable[..., Launch], argv: list[str], host: str, port: int, workers: int
) -> None:
    """`--host/--port/--workers` win over WSM_GATEWAY_*; without them the settings apply.
    uvicorn gets the app factory and the gateway's options: uvloop and httptools (the fast
    path), the lifespan on (it starts the spool replayer), our JSON logging kept, no access
    log, no proxy-headers rewriting (the gateway never reads the client's address), no
    `Server:` header, 10 s for in-flight webhooks at shutdown; main then exits 0.
    Kills, in main: parse_args(None) (reads pytest's own argv), `args.host and ...`, each
    uvicorn option dropped, None'd or flipped (factory, host, loop, http, lifespan,
    log_config, access_log, proxy_headers, server_header, timeout_graceful_shutdown 10 ->
    None/11), `return 0` -> 1; in parse_args: parser.parse_args(None)."""
    result = launch(argv, **SETTINGS_ADDRESS)
    assert result.status == 0
    assert result.runs == [
        (
            ("gateway.app:create_app_from_environment",),
            {
                "factory": True,
                "host": host,
                "port": port,
                "workers": workers,
                "loop": "uvloop",
                "http": "httptools",
                "lifespan": "on",
                "log_config": None,
                "access_log": False,
                "proxy_headers": False,
                "server_header": False,
                "timeout_graceful_shutdown": 10,
            },
        )
    ]


def test_the_starting_line_says_where_it_listens_and_which_redis_it_found(
    launch: Callable[..., Launch],
    caplog: pytest.LogCaptureFixture,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    """The one line an operator reads at start: "gateway starting" with the address, the
    process count, the Redis version found and the spool directory (absolute). Kills, in
    main: the version set to None, the message None'd or altered, each field's name altered,
    the spool directory given as str(None)."""
    caplog.set_level(logging.INFO, logger="wsm.gateway.cli")
    assert launch(["--port", "18083"], **SETTINGS_ADDRESS).status == 0
    [record] = [r for r in caplog.records if r.name == "wsm.gateway.cli"]
    assert record.getMessage() == "gateway starting"
    fields = {k: getattr(record, k, "<missing>") for k in ("host", "port", "workers")}
    assert fields == {"host": "127.0.0.3", "port": 18083, "workers": 3}
    assert getattr(record, "redis_version", None) == sync_redis.info("server")["redis_version"]
    assert getattr(record, "spool_dir", None) == str((tmp_path / "spool").resolve())


def test_invalid_settings_exit_2_naming_the_command(
    launch: Callable[..., Launch], capsys: pytest.CaptureFixture[str]
) -> None:
    """Settings that do not validate: `wsm gateway: invalid settings` on stderr, exit status
    2 (the usage-error status every wsm command uses), uvicorn never started. Kills, in
    main: load_settings given None or another name, that `return 2` -> 3."""
    result = launch([], WSM_QUEUE_SHARDS="many")
    assert result.status == 2
    assert result.runs == []
    assert capsys.readouterr().err.startswith("wsm gateway: invalid settings:\n")


def test_a_redis_too_old_exits_2_before_uvicorn_starts(
    launch: Callable[..., Launch],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The version check at start finds a Redis older than 7.0: one critical line, exit
    status 2, no worker forked (test_unsupported_redis.py runs this against a server that
    reports 6.x, checking only a non-zero status). Kills, in main: that `return 2` -> 3."""
    import gateway.redis_link

    async def too_old(settings: Any) -> str:
        raise UnsupportedRedis("Redis 6.2.14 is too old: wsm needs Redis 7.0+ or Valkey")

    monkeypatch.setattr(gateway.redis_link, "check_server_at_start", too_old)
    result = launch([])
    assert result.status == 2
    assert result.runs == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == [
        "refusing to start: Redis 6.2.14 is too old: wsm needs Redis 7.0+ or Valkey"
    ]


def test_a_bad_flag_is_reported_under_the_command_s_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`wsm gateway --port eighty`: argparse's usage and error name `wsm gateway` (not
    `__main__.py` or pytest), exit status 2. Kills, in parse_args: prog None'd, dropped or
    altered."""
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["--port", "eighty"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wsm gateway ")
    assert "wsm gateway: error: argument --port: invalid int value: 'eighty'" in err


# --- gateway/app.py: the lifespan, the client, the refusal ----------------------------------


async def test_the_lifespan_starts_the_spool_replayer(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """An event already in the process's spool when the server starts reaches Redis: the
    ASGI lifespan runs the runtime's start (the replayer) and its stop. Kills, in
    GatewayApp.__init__: lifespan=None or not passed (FastAPI's empty lifespan: the spool is
    never replayed); in GatewayApp.__call__: receive given as None to FastAPI (the lifespan
    cannot read its startup message)."""
    from gateway.app import create_app

    chat = "5511966660001@c.us"
    app = create_app(steady_settings(redis_url, key_prefix, tmp_path / "spool"))
    await app.runtime.spool.append(compact(text_message(chat, "spooled before start")), 1)

    async def replayed() -> bool:
        return len(queued_events(sync_redis, key_prefix, "default", chat)) == 1

    async with running_lifespan(app):
        await async_wait_until(replayed, timeout=15, what="the spooled event in Redis")
    [event] = queued_events(sync_redis, key_prefix, "default", chat)
    assert event.received_at_ms == 1


async def test_create_app_uses_the_client_it_is_given(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """create_app(settings, client) serves with that client, not one built from REDIS_URL
    (here a port nothing listens on): /readyz is ready. Kills, in create_app:
    GatewayRuntime(settings, None) and GatewayRuntime(settings)."""
    from gateway.app import create_app

    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    client = connect(redis_url)
    app = create_app(steady_settings(nowhere, key_prefix, tmp_path / "spool"), client)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=10
        ) as http:
            response = await http.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ready"
    finally:
        await app.runtime.stop()
        await client.aclose()


def test_create_app_refuses_without_a_key_saying_why(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """A worker process started without WEBHOOK_HMAC_KEY (uvicorn run by hand, bypassing
    `wsm gateway`'s check) fails with the same explanation, which uvicorn prints. Kills, in
    create_app: UnsignedRefused(None)."""
    from gateway.app import create_app
    from gateway.signature import UNSIGNED_REFUSED, UnsignedRefused

    settings = steady_settings(redis_url, key_prefix, tmp_path, WEBHOOK_HMAC_KEY=None)
    with pytest.raises(UnsignedRefused) as refused:
        create_app(settings)
    assert str(refused.value) == UNSIGNED_REFUSED


# --- gateway/metrics.py: dead processes' live gauges ----------------------------------------


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A prometheus multiprocess directory, with gateway.metrics told it runs in that mode
    (the test process's prometheus_client stays in single mode: the files here are fakes)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv(ENV_VAR, str(directory))
    monkeypatch.setattr(metrics, "multiprocess_mode", lambda: True)
    yield directory


def a_dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait(30)
    return child.pid


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"")


def test_the_live_gauges_of_dead_processes_are_dropped(multiprocess_dir: Path) -> None:
    """A gateway process killed with SIGKILL leaves its live gauge files (its spool count,
    its start time); the next one drops them, and only them: a live process's files and a
    dead one's counters (which keep counting in the totals) stay. Kills, in
    forget_dead_processes: the mode check negated, the directory None'd or its variable
    None'd, `if not directory` negated, `dead = None`, the glob pattern None'd or altered,
    Path(None), the match None'd or given None, `match and` -> `or`, `not _alive` ->
    `_alive`, the pid's group None'd / 2 / int(None) (both places), sorted(None),
    set(None), mark_process_dead(None)."""
    dead, alive = a_dead_pid(), os.getpid()
    touch(
        multiprocess_dir,
        f"gauge_livesum_{dead}.db",
        f"gauge_liveall_{dead}.db",
        f"counter_{dead}.db",
        f"gauge_livesum_{alive}.db",
        f"gauge_liveall_{alive}.db",
    )
    assert sorted(set(metrics.forget_dead_processes())) == [dead]
    assert sorted(p.name for p in multiprocess_dir.iterdir()) == [
        f"counter_{dead}.db",
        f"gauge_liveall_{alive}.db",
        f"gauge_livesum_{alive}.db",
    ]


def test_a_stopping_process_drops_its_own_live_gauges(multiprocess_dir: Path) -> None:
    """At shutdown a gateway process drops its own live gauges (its spool count must stop
    being summed) and leaves other processes' files. Kills, in forget_this_process:
    mark_process_dead(None)."""
    me, other = os.getpid(), a_dead_pid()
    touch(
        multiprocess_dir,
        f"gauge_livesum_{me}.db",
        f"gauge_liveall_{me}.db",
        f"counter_{me}.db",
        f"gauge_livesum_{other}.db",
    )
    metrics.forget_this_process()
    assert sorted(p.name for p in multiprocess_dir.iterdir()) == [
        f"counter_{me}.db",
        f"gauge_livesum_{other}.db",
    ]
