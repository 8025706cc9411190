"""settle_heap (shared/heap.py): what is alive is frozen out of the collector's sight, the young
generation waits YOUNG_THRESHOLD allocations, the older ones keep their ratios. In a child
interpreter: the test process's own collector is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.heap import YOUNG_THRESHOLD

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
