"""The cyclic garbage collector, set for a long-running service on the hot path.

Measured in a worker during `wsm loadtest --customers 200 --messages 10 --processes 2` (gc
callbacks timing each collection, docs/benchmarks.md "The garbage collector"): with Python's
defaults the collector took 5-7% of the worker's CPU, about 275 young collections of 0.4-0.6
ms each (every 700 allocations, with a turn's objects still alive) and two full collections of
35-55 ms each over the 85,000 objects every process builds at start (modules, settings, the
handler), pauses that land on whichever replies are in flight.

`settle_heap()`, once everything lasting is built: the objects alive then are moved out of the
collector's sight (`gc.freeze`, so a full collection no longer walks them), and the young
generation is collected every `YOUNG_THRESHOLD` allocations instead of 700. Nothing is kept
longer than a cycle needs: objects freed by their reference count (almost all) never wait
for the collector; only those in reference cycles wait for the next young collection.
"""

from __future__ import annotations

import gc

# Ten times fewer young collections (each walks only the objects still alive, the same few
# hundred in-flight turns whether they come every 700 allocations or every 10,000). The older
# generations keep Python's ratios (10 and 10).
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Freeze what is alive now and space out the young collections (see the module's doc)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


# Full collections after this many middle ones: none in any run a process lives through.
NO_FULL_COLLECTIONS = 1_000_000_000


def hold_full_collections() -> None:
    """For a load test's own instruments (the WAHA simulator, the simulated customers), which
    keep a record of every message for the whole run: settle_heap(), and no full collection
    until the process ends. Over those growing records a full collection took 30-50 ms, and
    every reply in flight then was measured that much late, as if the product had been slow
    (docs/benchmarks.md, first session of December 2026). The young collections go on, so
    garbage in short-lived cycles is still freed; what survives them is kept until exit, which
    a run of minutes affords. As `timeit` turns the collector off while it measures."""
    settle_heap()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_COLLECTIONS)
