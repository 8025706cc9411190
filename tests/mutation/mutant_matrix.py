"""A pytest plugin for tests/mutation/run_mutmut.py --matrix: runs every collected test once per
mutant named in the file WSM_MUTANTS_FILE (one name a line), with that mutant switched on.

One pytest process for all of them: starting pytest (and a Redis) per mutant costs seconds,
a test here costs a fraction of one. Each test id gets `mutant<i>` (the i-th line of the file) as
its parameter, so a failure names the mutant it killed. Not loaded by the suite: only with `-p
tests.mutation.mutant_matrix` in a mutmut copy of the tree, where the code carries mutmut's
trampolines (MUTANT_UNDER_TEST picks the mutant, and child processes inherit it).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mutants() -> list[str]:
    path = os.environ.get("WSM_MUTANTS_FILE")
    if not path:
        return []
    return [line.strip() for line in Path(path).read_text("utf-8").splitlines() if line.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = _mutants()
    if names:
        # First, so the mutant is on before any other fixture builds the objects under test.
        metafunc.fixturenames.insert(0, "_mutant")
        # Ids by position (mutant names hold non-ASCII, which pytest escapes in ids).
        ids = [f"mutant{i}" for i in range(len(names))]
        metafunc.parametrize("_mutant", names, indirect=True, ids=ids)


# A test that runs this long under a mutant hangs on it (a wait that never ends): it fails, and
# the mutant counts as killed, as mutmut counts its timeouts.
TEST_TIMEOUT_S = 20


class MutantHung(Exception):
    pass


def _hung(signum: int, frame: object) -> None:
    raise MutantHung(f"no answer in {TEST_TIMEOUT_S} s")


# Mutants some test already failed on: the rest of their tests are skipped.
_killed: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """All of one mutant's tests together, so a killed mutant's remaining tests are skipped."""

    def mutant_of(item: pytest.Item) -> int:
        callspec = getattr(item, "callspec", None)
        return callspec.indices.get("_mutant", 0) if callspec else 0

    items.sort(key=mutant_of)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    callspec = getattr(item, "callspec", None)
    if (
        call.excinfo is not None
        and callspec
        and not call.excinfo.errisinstance(pytest.skip.Exception)
    ):
        _killed.add(callspec.params["_mutant"])


# autouse: pytest-asyncio rebuilds async test items, and a fixture only named in
# `fixturenames` would then not run for them (their mutant would silently be off).
@pytest.fixture(autouse=True)
def _mutant(request: pytest.FixtureRequest) -> Iterator[str]:
    name = getattr(request, "param", None)
    if name is None:
        yield ""
        return
    if name in _killed:
        pytest.skip("killed already")
    os.environ["MUTANT_UNDER_TEST"] = name
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield name
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.environ["MUTANT_UNDER_TEST"] = ""
