"""What every `wsm <command>` does first: read the settings, or say what is wrong and exit 2."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from shared.settings import Settings


def load_settings(program: str) -> Settings | None:
    """The settings from the environment; None (after telling stderr why) when they are
    invalid. The values are never echoed (Settings hides input in its errors)."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"{program}: invalid settings:\n{exc}", file=sys.stderr)
        return None
