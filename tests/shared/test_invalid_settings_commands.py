"""Every command refuses settings that do not validate the same way: `<command>: invalid
settings:` and pydantic's reason on stderr, exit status 2, nothing started or written (found
by an audit: `wsm dev` (so `make run`), `wsm agent` and `wsm knowledge` died with a traceback,
and `wsm knowledge check` exited 1, which it documents as "no documents"). Run as a user types
them, from a folder with no `.env`. The gateway's, the worker's and `wsm dlq`'s refusals:
tests/gateway/test_cli_mutants.py, tests/worker/test_fleet_parts.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import LOG_LEVELS, Settings

ROOT = Path(__file__).resolve().parents[2]


def run_wsm(cwd: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WSM_", "WAHA_", "GROQ_"))}
    clean.pop("REDIS_URL", None)
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "wsm", *argv], cwd=cwd, env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["dev"], {"WSM_WORKER_CONCURRENCY": "1x"}, "WSM_WORKER_CONCURRENCY"),
        (["dev"], {"WSM_LOG_LEVEL": "trace"}, "WSM_LOG_LEVEL"),
        (["agent", "list"], {"WSM_API_TOKEN": "short"}, "WSM_API_TOKEN"),
        (["knowledge", "check"], {"WSM_BUSINESS_FILES": "garbage"}, "WSM_BUSINESS_FILES"),
        (["config"], {"WSM_LOG_LEVEL": "verbose"}, "WSM_LOG_LEVEL"),
        (["gateway"], {"WSM_DEDUPE_TTL_SECONDS": "3899"}, "WSM_WEBHOOK_MAX_AGE_SECONDS + 300"),
    ],
    ids=["dev", "dev log level", "agent", "knowledge", "config log level", "dedupe window"],
)
def test_a_command_refuses_invalid_settings_with_exit_2_and_starts_nothing(
    argv: list[str], env: dict[str, str], named: str, tmp_path: Path
) -> None:
    done = run_wsm(tmp_path, env, *argv)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"wsm {argv[0]}: invalid settings:\n"), done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no var/dev, no Redis, no file of any kind


@pytest.mark.parametrize("given", ["debug", "INFO", "Warning", "error"])
def test_the_log_levels_readme_names_are_accepted_in_any_case(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSM_LOG_LEVEL", given)
    level = Settings(_env_file=None).log_level  # type: ignore[call-arg]
    assert level == given.upper() and level in LOG_LEVELS


@pytest.mark.parametrize(
    ("max_age", "dedupe", "valid"),
    [
        ("3600", "3900", True),
        ("3600", "3899", False),
        ("5400", "86400", True),
        ("86400", "86400", False),
    ],
)
def test_the_dedupe_window_must_outlast_the_replay_window(
    max_age: str, dedupe: str, valid: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook replayed after its dedupe marker expired, with a timestamp the replay window
    still accepts (up to WSM_WEBHOOK_MAX_AGE_SECONDS old, 300 s ahead), would be queued again
    (found by an audit: nothing tied the two settings)."""
    monkeypatch.setenv("WSM_WEBHOOK_MAX_AGE_SECONDS", max_age)
    monkeypatch.setenv("WSM_DEDUPE_TTL_SECONDS", dedupe)
    if valid:
        Settings(_env_file=None)  # type: ignore[call-arg]
    else:
        with pytest.raises(ValidationError, match="WSM_DEDUPE_TTL_SECONDS"):
            Settings(_env_file=None)  # type: ignore[call-arg]
