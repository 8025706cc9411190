"""The queue's promises (an event answered 200 is kept, a commit happens once, a fence is never
handed out twice) hold across a Redis crash only with `appendfsync always`. It is the only
production setting: compose runs it unconditionally and the docs offer no other."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def redis_command() -> list[str]:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text("utf-8"))
    return [str(part) for part in compose["services"]["redis"]["command"]]


def test_compose_runs_redis_with_appendfsync_always_and_no_way_around_it() -> None:
    command = redis_command()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command.count("--appendfsync") == 1
    assert command[command.index("--appendfsync") + 1] == "always"  # not a ${VARIABLE}


def test_the_operations_guide_documents_always_as_the_only_setting() -> None:
    guide = (REPO / "docs" / "operations.md").read_text("utf-8")
    assert "REDIS_APPENDFSYNC" not in guide
    assert "## Redis persistence" in guide
    section = guide.split("## Redis persistence", 1)[1].split("\n## ", 1)[0]
    assert "**`appendfsync always`**" in section
    assert "only supported" in section
    # Each setting is described by what it loses, failover included.
    for setting in ("`always`", "`everysec`", "`no`"):
        assert f"| {setting} |" in section
    assert "failover" in section
