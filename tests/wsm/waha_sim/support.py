"""Comparing the simulator's bodies with real WAHA bodies key for key, at every level (the
values are the simulator's own; the keys must be WAHA's)."""

from __future__ import annotations

from typing import Any


def keys_at_every_level(document: Any, path: str = "") -> dict[str, list[str]]:
    """{path: keys} for every object in the document (lists: their first element)."""
    found: dict[str, list[str]] = {}
    if isinstance(document, dict):
        found[path or "."] = list(document)
        for key, value in document.items():
            found.update(keys_at_every_level(value, f"{path}.{key}"))
    elif isinstance(document, list) and document:
        found.update(keys_at_every_level(document[0], f"{path}[]"))
    return found


def assert_same_keys(ours: Any, theirs: Any, *, ordered: bool = False) -> None:
    mine, fixture = keys_at_every_level(ours), keys_at_every_level(theirs)
    assert set(mine) == set(fixture), (sorted(mine), sorted(fixture))
    for path, keys in fixture.items():
        if ordered:
            assert mine[path] == keys, path
        else:
            assert set(mine[path]) == set(keys), path


def assert_fixture_keys_present(ours: Any, theirs: Any) -> None:
    mine = keys_at_every_level(ours)
    for path, keys in keys_at_every_level(theirs).items():
        assert path in mine, path
        assert set(keys) <= set(mine[path]), (path, set(keys) - set(mine[path]))
