"""Starting wsm's real processes (gateway, API, worker fleet) for the tests that need them.

Each runs as `python -m <package>` in its own working directory (so no developer `.env` is
read), with the environment the test gives it, its output in a log file for failure messages,
and is stopped with SIGTERM (then SIGKILL) at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.embedded_redis import free_port
from tests.ops.render import REPO
from tests.support.polling import wait_until

# Inherited variables that would change how a wsm process behaves; tests give their own.
_DROPPED = ("REDIS_URL", "WEBHOOK_HMAC_KEY", "PROMETHEUS_MULTIPROC_DIR")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


def wsm_environment(extra: Mapping[str, str]) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED and not key.startswith("WSM_")
    }
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO), environment.get("PYTHONPATH", "")) if part
    )
    environment.update(extra)
    return environment


def python_m(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter (for running_program, with a
    wsm_environment)."""
    return [sys.executable, "-m", module, *args]


@contextlib.contextmanager
def serving_on_loopback(
    package: str, environment: Mapping[str, str], workdir: Path
) -> Iterator[tuple[Service, int]]:
    """`python -m <package>` for an HTTP process (the gateway, the API) on a free loopback
    port, yielded with that port once its /healthz answers."""
    port = free_port()
    argv = python_m(package, "--host", "127.0.0.1", "--port", str(port))
    ready_url = f"http://127.0.0.1:{port}/healthz"
    with running_program(
        package, argv, wsm_environment(environment), workdir, ready_url
    ) as service:
        yield service, port


@contextlib.contextmanager
def running_gateway(
    redis_url: str, hmac_key: str, prefix: str, workdir: Path
) -> Iterator[tuple[Service, int]]:
    """The real gateway on one shard under `prefix`, its spool in `workdir`."""
    environment = {
        "REDIS_URL": redis_url,
        "WEBHOOK_HMAC_KEY": hmac_key,
        "WSM_KEY_PREFIX": prefix,
        "WSM_QUEUE_SHARDS": "1",
        "WSM_SPOOL_DIR": str(workdir / "spool"),
    }
    with serving_on_loopback("gateway", environment, workdir) as running:
        yield running


@contextlib.contextmanager
def running_program(
    name: str,
    argv: list[str],
    environment: Mapping[str, str],
    workdir: Path,
    ready_url: str,
    timeout: float = 30.0,
) -> Iterator[Service]:
    """`argv` in its own process group, yielded once `ready_url` answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            env=dict(environment),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, process, log)
    try:
        wait_until(
            lambda: process.poll() is not None or _answers(ready_url),
            timeout=timeout,
            interval=0.1,
            what=f"{name} to answer {ready_url}",
        )
        assert process.poll() is None, f"{name} exited at start:\n{service.tail()}"
        yield service
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
