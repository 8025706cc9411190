"""settle_heap (shared/heap.py): what is alive is frozen out of the collector's sight, the young
generation waits YOUNG_THRESHOLD allocations, the older ones keep their ratios. In a child
interpreter: the test process's own collector is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.heap import NO_FULL_COLLECTIONS, YOUNG_THRESHOLD

PROBE = """
import gc, json
from shared.heap import settle_heap
before = gc.get_threshold()
lasting = [[n] for n in range(5000)]
settle_heap()
after = gc.get_threshold()
print(json.dumps({"before": before, "after": after, "frozen": gc.get_freeze_count()}))
"""


def test_settle_heap_freezes_what_is_alive_and_spaces_young_collections() -> None:
    answer = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(answer.stdout)
    assert YOUNG_THRESHOLD == 10_000
    assert seen["after"] == [YOUNG_THRESHOLD, *seen["before"][1:]]
    assert seen["frozen"] > 5000


HELD = """
import gc, json
from shared.heap import hold_full_collections
before = gc.get_threshold()
hold_full_collections()
after = gc.get_threshold()
# Young collections as often as Python's default, so middle ones come quickly: only the
# full collections' threshold is under test.
gc.set_threshold(700, after[1], after[2])
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and full.append(info["generation"]))
records = []
for n in range(300_000):  # a growing record with short-lived cycles in between
    records.append([n])  # lists stay tracked (a dict of atoms would be untracked)
    cycle = [n]
    cycle.append(cycle)
print(json.dumps({"before": before, "after": after, "generations": full}))
"""


def test_hold_full_collections_keeps_young_ones_and_runs_no_full_one() -> None:
    """The load test's instruments: young collections go on (the short-lived cycles are
    freed), and no full collection walks the growing records while the process lives."""
    answer = subprocess.run(
        [sys.executable, "-c", HELD], capture_output=True, text=True, check=True, timeout=120
    )
    seen = json.loads(answer.stdout)
    assert seen["after"] == [YOUNG_THRESHOLD, seen["before"][1], NO_FULL_COLLECTIONS]
    assert 0 in seen["generations"]  # young collections happened
    assert 2 not in seen["generations"]
